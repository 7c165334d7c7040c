-- Network faults between fluxalock and a real Redis, made by our own TCP
-- proxy (spec/support/proxy.lua, a separate process on loopback): cut
-- connections, a half-open peer, a slow link, replies split into single
-- bytes, and servers that answer garbage or are not Redis at all.
local R = require "support.redis"
local P = require "support.proxy"

local timed = R.timed

local ERR = "^fluxalock: %a+ 127%.0%.0%.1:%d+: "

describe("through a TCP proxy", function()
  local server, px, fl

  setup(function()
    server = R.start()
    px = P.start(server.port, "pass")
    fl = require "fluxalock"
  end)
  teardown(function()
    px:stop()
    server:stop()
  end)
  before_each(function() px:mode("pass") end)

  local function locker(extra)
    local o = { url = px.url, timeout = 0.5, connect_timeout = 0.5 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return fl.locker(o)
  end

  it("replaces a cut idle connection before using it: no call fails", function()
    local l = locker()
    local lock = assert(l:obtain("cut", 30))
    local before = px:count()
    px:cut() -- both sides reset while idle
    local left = assert(lock:ttl())
    assert.is_true(left > 20)
    assert.is_true(lock:release())
    assert.equal(before + 1, px:count(), "one new connection")
  end)

  it("reports a connection reset on connect, then works once the link is back", function()
    local l = locker()
    px:mode("drop")
    local dt, lock, err = timed(function() return l:obtain("drop", 5) end)
    assert.is_nil(lock)
    assert.matches(ERR, err)
    assert.is_true(dt < 1.7, "did not hang")
    px:mode("pass")
    lock = assert(l:obtain("drop", 5))
    assert.is_true(lock:release())
  end)

  it("reports a connection cut while a request is in flight, at once", function()
    local l = locker { timeout = 5 }
    local lock = assert(l:obtain("inflight", 30))
    px:mode("stall")
    local code = [[
      local fl = require "fluxalock"
      local core = require "fluxalock.core"
      local l = fl.locker { url = os.getenv("URL"), timeout = 5 }
      local t = core.now()
      local lock, err = l:obtain("inflight2", 5)
      print(string.format("result %s|%s|%.3f", tostring(lock), tostring(err), core.now() - t))
    ]]
    local rx = px:rx()
    local child = R.spawn(code, { URL = px.url })
    R.until_true(function() return px:rx() > rx end, 10, "the child's request")
    px:cut()
    local out = child:wait(15)
    local got, err, dt = out:match("result (.-)|(.-)|([%d.]+)")
    assert.equal("nil", got, out)
    assert.matches(ERR, err)
    assert.is_true(tonumber(dt) < 4, "returned when cut, not at its timeout: " .. out)
    px:mode("pass")
    assert.is_true(lock:release())
  end)

  it("times out on a half-open peer that never answers, then recovers", function()
    local l = locker()
    local lock = assert(l:obtain("half", 30))
    px:mode("stall")
    for what, f in pairs {
      obtain = function() return l:obtain("half2", 5) end,
      ttl = function() return lock:ttl() end,
      refresh = function() return lock:refresh(5) end,
      release = function() return lock:release() end,
    } do
      local dt, a, b = timed(f)
      assert.is_nil(a, what)
      assert.matches(ERR .. "timed out$", b)
      -- a plain script's receive blocks for half the timeout at most, then
      -- polls for the rest: the call still waits all of its timeout
      assert.is_true(dt >= 0.5, ("%s gave up after %.3f s"):format(what, dt))
      assert.is_true(dt < 0.5 + 1, ("%s took %.2f s"):format(what, dt))
    end
    assert.is_true(lock:held())
    px:mode("pass")
    assert.is_true(lock:ttl() > 20)
    assert.is_true(lock:release())
  end)

  it("works over a slow link within the timeout, and times out when it is slower", function()
    px:mode("slow", 40) -- 40 ms per forwarded chunk
    local l = locker { timeout = 1 }
    local lock = assert(l:obtain("slow", 30))
    assert.is_true(lock:ttl() > 20)
    assert.is_true(lock:refresh(5))
    assert.is_true(lock:release())
    px:mode("slow", 400)
    local fast = locker { timeout = 0.1, connect_timeout = 1 }
    local dt, a, err = timed(function() return fast:obtain("slow2", 5) end)
    assert.is_nil(a)
    assert.matches(ERR .. "timed out$", err)
    assert.is_true(dt < 1 + 0.1 + 1)
  end)

  it("handles every reply split into single bytes, the handshake included", function()
    local auth = R.start { args = { "--requirepass", "pw-1byte" }, password = "pw-1byte" }
    local apx = P.start(auth.port, "onebyte")
    finally(function() apx:stop() auth:stop() end)
    local l = fl.locker { url = apx.url, password = "pw-1byte", db = 3, timeout = 2 }
    local lock = assert(l:obtain("bytes", 30))
    assert.is_true(lock:fence() >= 1)
    local left = assert(lock:ttl())
    assert.is_true(left > 20 and left <= 30)
    assert.is_true(lock:refresh(5))
    assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("bytes", 5) })
    assert.is_true(lock:release())
    assert.is_false(lock:release())
    assert.equal("0", auth:cli("-n", "3", "EXISTS", "bytes"))
    local again = assert(l:obtain("bytes", 5))
    assert.equal(lock:fence() + 1, again:fence())
    assert.is_true(again:release())
    -- a waiting obtain (BLPOP reply is an array) over the same link
    local holder = assert(l:obtain("bytes-wait", 0.3))
    local waited = assert(l:obtain("bytes-wait", 2, 1.5), "obtained once the first expired")
    assert.is_false(holder:release())
    assert.is_true(waited:release())
  end)

  describe("a server that answers garbage", function()
    local payloads = {
      ["a status where an integer belongs"] = "+OK\r\n",
      ["a bulk string"] = "$5\r\nhello\r\n",
      ["an array"] = "*2\r\n:1\r\n:2\r\n",
      ["a nil"] = "$-1\r\n",
      ["a nil array"] = "*-1\r\n",
      ["a negative integer"] = ":-7\r\n",
      ["an unknown type byte"] = "?what\r\n",
      ["a bad bulk length"] = "$-7\r\n",
      ["a bad array length"] = "*x\r\n",
      ["binary noise"] = "\0\1\2\255\254\r\n",
      ["an error reply"] = "-ERR boom\r\n",
    }
    for name, bytes in pairs(payloads) do
      it("gets nil and a fluxalock message: " .. name, function()
        local hex = bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
        px:mode("garbage", hex)
        local l = locker()
        local dt, lock, err = timed(function() return l:obtain("garbage", 5) end)
        assert.is_nil(lock)
        assert.is_string(err)
        assert.matches(ERR, err)
        assert.is_true(dt < 1.7)
        -- the next request on the same locker must not read leftovers
        px:mode("pass")
        lock = assert(l:obtain("garbage-after", 5))
        assert.is_true(lock:release())
      end)
    end

    it("refuses at once an array header claiming 100 million elements", function()
      -- hiredis would allocate the element table (800 MB) on the header
      -- alone and then wait for elements that never come: found by the
      -- reply fuzzer.  The reader caps arrays and fails the call instead.
      px:mode("garbage", ("*100000000\r\n"):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
      local lock, err = locker():obtain("huge-array", 5)
      assert.is_nil(lock)
      assert.matches(ERR .. "protocol error: ", err)
      -- hiredis 0.14 through our cap / hiredis 1.x through its own limit
      assert.truthy(err:find("reply too large", 1, true) or err:find("out of range", 1, true), err)
    end)

    it("fails the handshake clearly when AUTH gets garbage", function()
      px:mode("garbage", "2a330d0a") -- "*3\r\n" and nothing more
      local l = locker { password = "secret-garbage" }
      local lock, err = l:obtain("g", 5)
      assert.is_nil(lock)
      assert.matches(ERR, err)
      assert.is_nil(err:find("secret-garbage", 1, true))
    end)
  end)

  it("gets nil and a fluxalock message from a web server, not Redis", function()
    px:mode("http")
    local l = locker()
    for _, f in ipairs {
      function() return l:obtain("web", 5) end,
      function() return l:obtain("web", 5, 1) end,
    } do
      local dt, lock, err = timed(f)
      assert.is_nil(lock)
      assert.matches(ERR .. "protocol error", err)
      assert.is_true(dt < 1.7)
    end
  end)

  it("is not killed by SIGPIPE when the server resets the connection mid-write", function()
    -- a child without LuaSocket (which would ignore SIGPIPE for it) writes a
    -- request far larger than the socket buffers to a peer that never reads,
    -- and the peer resets the connection while the write is stuck
    local code = [[
      local fl = require "fluxalock"
      local l = fl.locker { url = os.getenv("URL"), timeout = 20 }
      local lock, err = l:obtain(string.rep("k", 48 * 1024 * 1024), 5)
      print("result", tostring(lock), err)
      print("alive")
    ]]
    px:mode("deaf")
    local n = px:count()
    local child = R.spawn(code, { URL = px.url })
    R.until_true(function() return px:count() > n end, 30, "the child's connection")
    -- the real signal: the child's socket to the proxy has bytes queued that
    -- the peer does not take (/proc/net/tcp: tx_queue of the connection)
    local function stuck()
      local f = assert(io.open("/proc/net/tcp"))
      local text = f:read("a")
      f:close()
      for rem, tx in text:gmatch("%x+:%x+ 0100007F:(%x+) 01 (%x+):%x+") do
        if tonumber(rem, 16) == px.port and tonumber(tx, 16) > 0 then return true end
      end
      return false
    end
    R.until_true(stuck, 30, "the child's write to get stuck")
    px:cut()
    local out = child:wait(30)
    assert.matches("alive", out)
    assert.matches("result\tnil\tfluxalock: obtain 127%.0%.0%.1:%d+: ", out)
  end)
end)
