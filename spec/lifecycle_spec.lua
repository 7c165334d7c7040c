-- The life of a locker around its server: not running, frozen, killed and
-- restarted, scripts flushed; and the lifetime of locks around lua_close.
local R = require "support.redis"

local timed = R.timed

describe("a locker whose Redis is not running", function()
  local fluxalock = require "fluxalock"

  it("returns nil, 'fluxalock: connect 127.0.0.1:<port>: Connection refused' #timing", function()
    local port = R.free_port()
    local locker = fluxalock.locker(("redis://127.0.0.1:%d/0"):format(port))
    local dt, lock, err = timed(locker.obtain, locker, "k", 5)
    assert.is_nil(lock)
    assert.equal(("fluxalock: connect 127.0.0.1:%d: Connection refused"):format(port), err)
    assert.is_true(dt < 2, "a refused connection is reported at once")
    -- a waiting obtain fails the same way, without waiting its wait out
    dt, lock, err = timed(locker.obtain, locker, "k", 5, 3)
    assert.is_nil(lock)
    assert.matches("^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused$", err)
    assert.is_true(dt < 2, ("a waiting obtain took %.3f s to report it"):format(dt))
  end)

  it("returns nil, 'fluxalock: connect unix:<path>: ...' for a missing socket", function()
    local path = "/tmp/fluxalock-no-such-dir/redis.sock"
    local locker = fluxalock.locker("unix://" .. path)
    local lock, err = locker:obtain("k", 5)
    assert.is_nil(lock)
    assert.equal("fluxalock: connect unix:" .. path .. ": No such file or directory", err)
  end)

  it("never shows the password in the failure", function()
    local port = R.free_port()
    local locker = fluxalock.locker(("redis://alice:hunter2@127.0.0.1:%d/3"):format(port))
    local lock, err = locker:obtain("k", 5)
    assert.is_nil(lock)
    assert.not_matches("hunter2", err, 1, true)
    assert.not_matches("alice", err, 1, true)
    assert.not_matches("hunter2", tostring(locker), 1, true)
  end)
end)

describe("a locker whose Redis is frozen (SIGSTOP)", function()
  local server, locker
  R.setup({ pool = { timeout = 0.2 } }, function(e) server, locker = e.server, e.locker end)

  it("gets nil, 'fluxalock: <op> 127.0.0.1:<port>: timed out' within its timeout, then works again #timing", function()
    local lock = assert(locker:obtain("frozen", 30))
    local where = "127.0.0.1:" .. server.port
    server:pause()
    local results = {}
    local calls = {
      { "ttl", function() return lock:ttl() end },
      { "refresh", function() return lock:refresh(5) end },
      { "obtain", function() return locker:obtain("frozen-2", 5) end },
      { "release", function() return lock:release() end },
    }
    for _, c in ipairs(calls) do
      local dt, v, err = timed(c[2])
      results[#results + 1] = { c[1], dt, v, err }
    end
    server:resume()
    for _, r in ipairs(results) do
      local op, dt, v, err = r[1], r[2], r[3], r[4]
      assert.is_nil(v, op .. " returned a value while the server was frozen")
      assert.equal(("fluxalock: %s %s: timed out"):format(op, where), err)
      assert.is_true(dt >= 0.15, ("%s gave up after %.3f s of a 0.2 s timeout"):format(op, dt))
      assert.is_true(dt < 0.2 + 1, ("%s took %.3f s with a 0.2 s timeout"):format(op, dt))
    end
    -- thawed: the same lock and locker work again on a new connection.
    -- What was sent meanwhile runs now, and may go: the timed-out release
    -- (its script cached by the timed-out obtain's own release, which
    -- frees "frozen-2") frees the key too; the client cannot know it did
    assert.is_true(lock:held(), "a failed release leaves the lock held")
    R.until_true(function() return server:cli("EXISTS", "frozen-2") == "0" end, 5, "the obtain's release")
    local ttl = assert(lock:ttl())
    if ttl > 0 then
      assert.is_true(ttl > 20)
      assert.is_true(lock:refresh(1))
      assert.is_true(lock:release())
    else -- released by the thawed server: the lock knows it now
      assert.is_false(lock:held())
    end
    local again = assert(locker:obtain("frozen", 5))
    assert.is_true(again:release())
  end)
end)

describe("a locker whose Redis was killed while a lock was held", function()
  it("works again once Redis is back on the same port", function()
    local server, _, locker = R.own()
    local lock = assert(locker:obtain("killed", 30))
    server:kill()
    -- down: failures are values, nothing raises
    local ok, v, err = pcall(locker.obtain, locker, "other", 5)
    assert.is_true(ok)
    assert.is_nil(v)
    assert.matches("^fluxalock: %a+ 127%.0%.0%.1:%d+: ", err)
    ok, v, err = pcall(lock.release, lock)
    assert.is_true(ok)
    assert.is_nil(v)
    assert.matches("^fluxalock: ", err)
    server:restart() -- an empty Redis: the old lock is gone
    local fresh = assert(locker:obtain("killed", 30))
    assert.is_true(fresh:held())
    -- the old lock's release says false (or an error), never deletes the new one
    ok, v, err = pcall(lock.release, lock)
    assert.is_true(ok)
    assert.is_true(v == false or (v == nil and type(err) == "string"))
    assert.equal(fresh:token(), server:cli("GET", "killed"))
    assert.is_true(fresh:release())
  end)
end)

describe("SCRIPT FLUSH on the server", function()
  it("between calls breaks nothing", function()
    local server, _, locker = R.own()
    local lock = assert(locker:obtain("flushed", 10))
    assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
    assert.is_true(lock:ttl() > 9)
    assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
    assert.is_true(lock:refresh(1))
    assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
    assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("flushed", 5) })
    assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
    assert.is_true(lock:release())
    assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
    local again = assert(locker:obtain("flushed", 5))
    assert.is_true(again:release())
    assert.equal("0", server:cli("EXISTS", "flushed"))
  end)
end)

describe("locks and their locker's connections", function()
  local server, fluxalock, locker
  R.setup({}, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  it("a lock outlives locker:close() and reconnects", function()
    local lock = assert(locker:obtain("closed", 10))
    locker:close()
    assert.is_true(lock:ttl() > 9)
    locker:close()
    assert.is_true(lock:release())
    assert.equal("0", server:cli("EXISTS", "closed"))
  end)

  it("a garbage lock whose locker is garbage too is still released", function()
    do
      local l = fluxalock.locker { url = server.url, prefix = "gc:" }
      local _ = assert(l:obtain("orphan", 60))
      l:close()
    end
    collectgarbage()
    collectgarbage()
    assert.equal("0", server:cli("EXISTS", "gc:orphan"))
  end)

  it("lua_close with locks held against a frozen server ends within the timeouts #timing", function()
    local p = R.child(([[
      local locks = {}
      for i = 1, 3 do locks[i] = assert(locker:obtain("frozen-exit-" .. i, 60)) end
      print("HELD")
      -- wait for the parent to freeze the server: a ping then times out
      local ping = core.pool { host = "127.0.0.1", port = %d, timeout = 0.2 }
      while ping:call { "PING" } do core.sleep(0.01) end
      print("EXITING", core.now())
      os.exit(0, true) -- lua_close: every lock's __gc tries its release
    ]]):format(server.port), { URL = server.url, TIMEOUT = 0.2 })
    R.until_true(function() return p:output():find("HELD", 1, true) ~= nil end, 10, "child holding")
    server:pause()
    local ok, out = pcall(p.wait, p, 10)
    local ended = R.now()
    server:resume()
    assert.is_true(ok, "the child hung in lua_close")
    local t = tonumber(out:match("EXITING%s+(%S+)"))
    assert.truthy(t, out)
    assert.is_true(ended - t < 3, ("lua_close took %.3f s"):format(ended - t))
  end)
end)
