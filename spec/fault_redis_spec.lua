-- Faults of the Redis process itself: killed and restarted while a lock is
-- held, while a client waits, between obtain and release; frozen (SIGSTOP)
-- and thawed.  Real redis-server processes on loopback; the client side is
-- this process or real child processes.
local R = require "support.redis"

local timed = R.timed

local ERR = "^fluxalock: %a+ 127%.0%.0%.1:%d+: "

local function gone(server) server:refusing() end

describe("Redis killed and restarted", function()
  -- the cases below rely on this: a restarted server with data answers
  -- every command once restart() returns.  A data set that takes a while
  -- to load: Redis serves INFO during the load, and its INFO persistence
  -- says "loading:1" next to "async_loading:0" (the harness once read the
  -- latter as loaded, and a case met LOADING)
  it("restart() returns once the data is loaded, not while Redis answers LOADING", function()
    local server = R.own { persist = true }
    assert.equal(200000, server:call("EVAL", [[
      for i = 1, 200000 do redis.call("SET", "k" .. i, i) end
      return redis.call("DBSIZE")]], 0))
    server:kill()
    server:restart()
    assert.same(1, server:call("EXISTS", "k200000"))
  end)

  it("mid-hold, data kept (appendfsync always): the holder still owns its lock", function()
    local server, _, locker = R.own { persist = true }
    local lock = assert(locker:obtain("job", 30))
    local fence = lock:fence()
    server:kill() -- SIGKILL: no chance to save anything more
    gone(server)
    local dt, ok, err = timed(function() return lock:release() end)
    assert.is_nil(ok)
    -- the idle connection was found dead before writing: a reconnect, refused
    assert.matches("^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused$", err)
    assert.is_true(dt < 2, "a refused connection is reported at once")
    assert.is_true(lock:held(), "a failed release leaves the lock held")
    server:restart()
    local left = assert(lock:ttl())
    assert.is_true(left > 20 and left <= 30)
    assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("job", 5) })
    assert.is_true(lock:refresh(5))
    assert.is_true(lock:release())
    local again = assert(locker:obtain("job", 5))
    assert.is_true(again:fence() > fence, "the fence counter survived the restart")
    assert.is_true(again:release())
  end)

  it("mid-hold, data lost: the holder learns it lost the lock and deletes nothing", function()
    local server, _, locker = R.own()
    local lock = assert(locker:obtain("job", 30))
    server:kill()
    server:restart() -- an empty Redis on the same port
    local other = assert(locker:obtain("job", 30), "the key is free again")
    assert.equal(0, lock:ttl())
    assert.is_false(lock:refresh(5))
    assert.is_false(lock:release())
    assert.is_true(other:ttl() > 0, "the new holder's lock is untouched")
    assert.is_true(other:release())
  end)

  it("between obtain and release (graceful restart): release reconnects and succeeds", function()
    local server, _, locker = R.own { persist = true }
    local lock = assert(locker:obtain("job", 30))
    server:restart() -- SIGTERM, then the same port again
    assert.is_true(lock:release())
    assert.equal("0", server:cli("EXISTS", "job"))
  end)

  it("mid-wait: the waiter returns an error at once, and waiting works after the restart", function()
    local server, _, locker = R.own { persist = true }
    local lock = assert(locker:obtain("job", 30))
    local code = [[
      local t = core.now()
      local lock, err = locker:obtain("job", 10, 10)
      print(string.format("result %s %s %.3f", tostring(lock), tostring(err), core.now() - t))
    ]]
    -- backoff steps of 2.5 s and more: once blocked on its wake-up list,
    -- the waiter stays there well past the kill (with the default 0.1 s
    -- steps a loaded machine's kill could meet its next try instead)
    local child = R.child(code, { URL = server.url, RETRY = 5 })
    -- the waiter is blocked on its wake-up list: it is waiting
    R.until_true(function() return server:blocked() > 0 end, 10, "the waiter")
    server:kill()
    local out = child:wait(15)
    local lockstr, err, dt = out:match("result (%S+) (.-) ([%d.]+)\n")
    assert.equal("nil", lockstr, out)
    assert.matches("^fluxalock: wait 127%.0%.0%.1:%d+: ", err)
    assert.is_true(tonumber(dt) < 5, "the waiter did not sit out its wait: " .. out)
    server:restart()
    -- the lock survived; a new waiter gets it once the holder releases
    child = R.child(code, { URL = server.url })
    R.until_true(function() return server:blocked() > 0 end, 10, "the waiter")
    assert.equal(lock:token(), server:cli("GET", "job")) -- the holder's value untouched
    assert.is_true(lock:release())
    out = child:wait(15)
    assert.matches("result fluxalock%.Lock: job %(held%) nil", out)
  end)
end)

describe("Redis frozen (SIGSTOP)", function()
  local server, fl
  local T = 0.3 -- timeout and connect_timeout of the pool under test
  local BOUND = 2 * T + 0.7 -- did not hang: connect + command + a margin

  setup(function()
    server = R.start()
    fl = R.fluxalock(server, { timeout = T, connect_timeout = T })
  end)
  teardown(function()
    server:resume()
    server:stop()
  end)

  local function times_out(what, f)
    local dt, a, b = timed(f)
    assert.is_nil(a, what .. " returned a value while Redis was frozen")
    assert.matches(ERR .. "timed out$", b)
    assert.is_true(dt >= T * 0.9, what .. " gave up before its timeout")
    assert.is_true(dt < BOUND, ("%s took %.2f s"):format(what, dt))
    return b
  end

  it("makes every call return 'timed out' within its timeout, then works again once thawed", function()
    local locker = fl.locker()
    local kept = assert(locker:obtain("kept", 30))
    local dropped = assert(locker:obtain("gone", 30))
    server:pause()
    finally(function() server:resume() end)
    times_out("obtain", function() return locker:obtain("new", 1) end)
    times_out("obtain with wait", function() return locker:obtain("new2", 2, 1) end)
    times_out("ttl", function() return kept:ttl() end)
    times_out("refresh", function() return kept:refresh(1) end)
    times_out("release", function() return dropped:release() end)
    assert.is_true(dropped:held(), "a release that timed out leaves the lock held")
    -- a locker that has no connection yet: TCP connects (the kernel accepts),
    -- Redis never answers
    times_out("obtain on a new connection", function()
      return fl.locker { url = server.url, timeout = T, connect_timeout = T }:obtain("x", 1)
    end)
    server:resume()
    assert.is_true(kept:ttl() > 20)
    assert.is_true(kept:refresh(5))
    assert.is_true(kept:release())
    -- the frozen server ran the requests it had received once it was thawed:
    -- the release may have happened late; either way the key is gone
    local r = dropped:release()
    assert.is_boolean(r)
    assert.equal("0", server:cli("EXISTS", "gone"))
    -- an obtain that timed out may have taken the key late: it expires by
    -- its own ttl (1 s), so a waiting obtain gets it
    local lock = assert(locker:obtain("new", 5, 3))
    assert.is_true(lock:release())
  end)
end)
