local R = require "support.redis"

describe("a lock", function()
  local server, fluxalock, locker
  R.setup({}, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  -- the lock's value in Redis: exactly its token, waiters or not
  local function value(key) return server:cli("GET", key) end
  local function exists(key) return server:cli("EXISTS", key) == "1" end
  local function pttl(key) return tonumber(server:cli("PTTL", key)) end

  it("is obtained once, refused to a second contender, and released", function()
    local lock = assert(locker:obtain("basic", 5))
    assert.is_true(lock:held())
    local again, err = locker:obtain("basic", 5)
    assert.is_nil(again)
    assert.equal("not obtained", err)
    assert.equal(fluxalock.NOT_OBTAINED, err)
    assert.is_true(lock:release())
    assert.is_false(lock:release())
    assert.is_false(lock:held())
    assert.equal("0", server:cli("EXISTS", "basic"))
  end)

  describe("release", function()
    it("returns true once, then false however often it is called", function()
      local lock = assert(locker:obtain("rel-many", 5))
      assert.is_true(lock:release())
      for _ = 1, 5 do assert.is_false(lock:release()) end
      assert.is_false(exists("rel-many"))
      -- the key is free for the next holder
      local next_lock = assert(locker:obtain("rel-many", 5))
      assert.is_true(next_lock:release())
    end)

    it("returns false after the lock expired", function()
      local lock = assert(locker:obtain("rel-expired", 0.05))
      R.until_true(function() return not exists("rel-expired") end, 5, "expiry")
      assert.is_true(lock:held()) -- not known locally until asked
      assert.is_false(lock:release())
      assert.is_false(lock:held())
    end)
  end)

  describe("ttl", function()
    it("is the time left in seconds, at millisecond resolution #timing", function()
      local lock = assert(locker:obtain("ttl-ms", 1.234))
      local t = assert(lock:ttl())
      assert.equal("number", type(t))
      assert.is_true(t <= 1.234 and t > 1.0, "ttl " .. t)
      local ms = t * 1000
      assert.is_true(math.abs(ms - math.floor(ms + 0.5)) < 1e-6, "not whole milliseconds: " .. t)
      -- and it agrees with the server's own PTTL
      assert.is_true(math.abs(pttl("ttl-ms") / 1000 - t) < 0.2)
      lock:release()
    end)

    it("takes a fractional ttl as milliseconds (0.25 is 250 ms)", function()
      local lock = assert(locker:obtain("ttl-frac", 0.25))
      local p = pttl("ttl-frac")
      assert.is_true(p > 0 and p <= 250, "PTTL " .. p)
      lock:release()
    end)

    it("is 0 once the lock is gone, and held() turns false", function()
      local lock = assert(locker:obtain("ttl-lost", 0.05))
      R.until_true(function() return not exists("ttl-lost") end, 5, "expiry")
      assert.equal(0, lock:ttl())
      assert.is_false(lock:held())
      assert.equal(0, lock:ttl()) -- and stays 0
    end)

    -- PTTL rounds down: in the last millisecond of a lock the server
    -- still holds, it answers 0.  ttl() answers 0 only for a lock no longer
    -- held (held() false then); the last millisecond is 0.001.  Each round
    -- asks many times a millisecond (a round trip on loopback is tens of
    -- microseconds) until the answer is 0, through that last millisecond.
    -- A round whose first answer is already 0 (the process stalled for the
    -- whole 0.1 s, as under valgrind on a loaded machine) has no answer
    -- before to check, and is made again
    it("is never 0 while the server still holds the lock: its last millisecond is 0.001", function()
      local rounds, tries = 0, 0
      while rounds < 5 do
        tries = tries + 1
        assert.is_true(tries <= 50, "50 tries for 5 rounds: the first ttl() was 0 each time")
        local key = "ttl-last:" .. tries
        local lock = assert(locker:obtain(key, 0.1))
        local t, n = nil, 0
        local last
        repeat
          last, t = t, assert(lock:ttl())
          n = n + 1
        until t == 0 or n > 100000
        assert.equal(0, t)
        assert.is_false(lock:held(), ("try %d: ttl() 0 after %s (%d calls) while held()"):format(tries, last, n))
        if last then
          assert.is_true(last > 0, "the ttl before was " .. tostring(last))
          rounds = rounds + 1
        end
      end
    end)

    it("is 0 after release", function()
      local lock = assert(locker:obtain("ttl-released", 5))
      lock:release()
      assert.equal(0, lock:ttl())
    end)

    it("is 0 for the old holder once another holder took the key", function()
      local lock = assert(locker:obtain("ttl-taken", 0.05))
      R.until_true(function() return not exists("ttl-taken") end, 5, "expiry")
      local other = assert(locker:obtain("ttl-taken", 5))
      assert.equal(0, lock:ttl())
      assert.is_true(other:ttl() > 4)
      other:release()
    end)
  end)

  describe("refresh", function()
    it("extends the lock BY ttl: 3 s left, refresh(2), 5 s left", function()
      local lock = assert(locker:obtain("refresh-by", 3))
      local before = assert(lock:ttl())
      assert.is_true(lock:refresh(2))
      local after = assert(lock:ttl())
      assert.is_true(after > before + 1.8 and after <= before + 2, ("%.3f -> %.3f"):format(before, after))
      assert.is_true(after > 4.7 and after <= 5, "ttl " .. after)
      assert.is_true(pttl("refresh-by") > 4700)
      lock:release()
    end)

    it("with {replace = true} sets the time left to exactly ttl", function()
      local lock = assert(locker:obtain("refresh-replace", 10))
      assert.is_true(lock:refresh(2, { replace = true }))
      local t = assert(lock:ttl())
      assert.is_true(t > 1.8 and t <= 2, "ttl " .. t)
      assert.is_true(lock:refresh(30, { replace = true }))
      t = assert(lock:ttl())
      assert.is_true(t > 29.8 and t <= 30, "ttl " .. t)
      -- replace = false is the default: extend
      assert.is_true(lock:refresh(1, { replace = false }))
      t = assert(lock:ttl())
      assert.is_true(t > 30.8 and t <= 31, "ttl " .. t)
      lock:release()
    end)

    it("returns false after expiry, does not bring the key back, and the lock stays lost", function()
      local lock = assert(locker:obtain("refresh-lost", 0.05))
      R.until_true(function() return not exists("refresh-lost") end, 5, "expiry")
      assert.is_false(lock:refresh(5))
      assert.is_false(lock:held())
      assert.is_false(exists("refresh-lost"))
      -- a later holder appears: the old lock still cannot refresh it
      local other = assert(locker:obtain("refresh-lost", 1))
      assert.is_false(lock:refresh(60))
      assert.is_false(lock:refresh(60, { replace = true }))
      assert.is_true(other:ttl() <= 1)
      assert.is_false(lock:release())
      assert.is_true(other:release())
    end)

    it("returns false after release", function()
      local lock = assert(locker:obtain("refresh-released", 5))
      lock:release()
      assert.is_false(lock:refresh(5))
      assert.is_false(exists("refresh-released"))
    end)
  end)

  describe("key and token", function()
    it("key() is the key as given, without the pool's prefix", function()
      local pl = fluxalock.locker { url = server.url, prefix = "app:" }
      local lock = assert(pl:obtain("jobs/nightly", 5))
      assert.equal("jobs/nightly", lock:key())
      assert.is_true(exists("app:jobs/nightly"))
      lock:release()
    end)

    it("token() is 40 hex chars (32 random, 8 that mark it fluxalock's), the value in Redis, fresh at every obtain", function()
      local seen = {}
      for _ = 1, 20 do
        local lock = assert(locker:obtain("tokens", 5))
        local tok = lock:token()
        assert.matches("^%x+$", tok)
        assert.equal(40, #tok)
        assert.equal(tok, (value("tokens"):gsub("%+$", "")))
        assert.is_nil(seen[tok])
        seen[tok] = true
        assert.is_true(lock:release())
        assert.equal(tok, lock:token()) -- still readable after release
      end
    end)
  end)

  describe("with a waiter", function()
    -- the holder's ttl, refresh and release work on its 10 s lock at key
    local function still_held(lock, key)
      assert.is_true(lock:ttl() > 9)
      assert.is_true(lock:refresh(1))
      assert.is_true(lock:ttl() > 10)
      assert.is_true(lock:release())
      assert.is_false(exists(key))
    end

    it("leaves the holder's value exactly its token", function()
      local lock = assert(locker:obtain("waited", 10))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("waited", 10, 0.05) })
      assert.equal(lock:token(), value("waited"))
      still_held(lock, "waited")
    end)

    it("ttl, refresh and release still recognise a value marked by a 0.1 waiter", function()
      local lock = assert(locker:obtain("marked", 10))
      server:cli("APPEND", "marked", "+") -- what fluxalock 0.1's waiters did
      assert.equal(lock:token() .. "+", value("marked"))
      still_held(lock, "marked")
    end)

    it("every release leaves one short-lived wake-up, however many releases", function()
      for _ = 1, 5 do assert.is_true(assert(locker:obtain("woke", 10)):release()) end
      assert.equal("1", server:cli("LLEN", "fluxalock:wake:woke"))
      local t = pttl("fluxalock:wake:woke")
      assert.is_true(t > 0 and t <= 1000, tostring(t))
    end)
  end)

  describe("held", function()
    it("is true until release, with no round trip", function()
      local lock = assert(locker:obtain("held", 5))
      assert.is_true(lock:held())
      server:pause() -- held() must not need the server
      local ok, h = pcall(lock.held, lock)
      server:resume()
      assert.is_true(ok)
      assert.is_true(h)
      lock:release()
      assert.is_false(lock:held())
    end)
  end)

  describe("fence", function()
    it("is a strictly increasing integer across obtains", function()
      local last = 0
      for i = 1, 10 do
        local lock = assert(locker:obtain("fence-" .. (i % 3), 5))
        local f = lock:fence()
        assert.equal("integer", math.type(f))
        assert.is_true(f > last, ("fence %d after %d"):format(f, last))
        last = f
        lock:release()
      end
    end)
  end)

  describe("metamethods", function()
    it("__tostring shows the key and held/released", function()
      local lock = assert(locker:obtain("shown", 5))
      assert.equal("fluxalock.Lock: shown (held)", tostring(lock))
      lock:release()
      assert.equal("fluxalock.Lock: shown (released)", tostring(lock))
      local pl = fluxalock.locker { url = server.url, prefix = "p:" }
      local pk = assert(pl:obtain("k", 5))
      assert.equal("fluxalock.Lock: k (held)", tostring(pk))
      pk:release()
    end)

    it("__name is fluxalock.Lock", function()
      local lock = assert(locker:obtain("named", 5))
      assert.equal("fluxalock.Lock", getmetatable(lock).__name)
      assert.equal("userdata", type(lock))
      lock:release()
    end)

    it("<close> releases on a normal exit from the scope", function()
      do
        local lock <close> = assert(locker:obtain("scoped", 5))
        assert.is_true(exists("scoped"))
        assert.is_true(lock:held())
      end
      assert.is_false(exists("scoped"))
    end)

    it("<close> releases on an error exit, and the user's error propagates", function()
      local mine = setmetatable({}, { __tostring = function() return "my error" end })
      local seen
      local ok, err = pcall(function()
        local lock <close> = assert(locker:obtain("scoped-err", 5))
        seen = lock
        error(mine)
      end)
      assert.is_false(ok)
      assert.equal(mine, err) -- the very object raised, not a release error
      assert.is_false(seen:held())
      assert.is_false(exists("scoped-err"))
      -- and with a string error the message is the user's
      ok, err = pcall(function()
        local _ <close> = assert(locker:obtain("scoped-err", 5))
        error("boom in the critical section")
      end)
      assert.is_false(ok)
      assert.matches("boom in the critical section$", err)
      assert.is_false(exists("scoped-err"))
    end)

    it("<close> on an already released lock does nothing", function()
      local other
      do
        local lock <close> = assert(locker:obtain("scoped-twice", 5))
        lock:release()
        other = assert(locker:obtain("scoped-twice", 5))
      end
      -- the scope's close must not have deleted the new holder's lock
      assert.is_true(other:held())
      assert.equal(other:token(), (value("scoped-twice"):gsub("%+$", "")))
      other:release()
    end)

    it("<close> with Redis gone swallows the failure; the user's error still wins", function()
      local l = fluxalock.locker { url = server.url, timeout = 0.2 }
      local ok, err = pcall(function()
        local _ <close> = assert(l:obtain("scoped-down", 5))
        server:pause()
        error("user error")
      end)
      server:resume()
      assert.is_false(ok)
      assert.matches("user error$", err)
      R.until_true(function() return server:cli("PING") == "PONG" end, 5, "server back")
    end)

    it("__gc releases a held lock that became garbage", function()
      local token
      -- no collection until the check below: the lock is garbage from the
      -- block's end, and a step of the collector in value() could run its
      -- __gc first (seen: the key already gone)
      collectgarbage("stop")
      finally(function() collectgarbage("restart") end)
      do
        local lock = assert(locker:obtain("garbage", 60))
        token = lock:token()
      end
      assert.equal(token, (value("garbage"):gsub("%+$", "")))
      collectgarbage("restart")
      collectgarbage()
      collectgarbage()
      assert.is_false(exists("garbage"))
    end)

    it("__gc of a released lock leaves the next holder alone", function()
      do
        local lock = assert(locker:obtain("garbage2", 60))
        lock:release()
      end
      local other = assert(locker:obtain("garbage2", 60))
      collectgarbage()
      collectgarbage()
      assert.is_true(exists("garbage2"))
      assert.is_true(other:release())
    end)
  end)

  describe("process exit", function()
    it("os.exit(0, true) while holding a lock leaves it released", function()
      local p = R.child([[
        local lock = assert(locker:obtain("exiting", 60))
        io.write("HELD ", lock:token(), "\n")
        os.exit(0, true)
      ]], { URL = server.url })
      local out = p:wait(60)
      assert.matches("^HELD %x+", out)
      assert.is_false(exists("exiting"))
    end)

    it("a process that ends normally while holding a lock leaves it released", function()
      local p = R.child([[
        HOLD = assert(locker:obtain("ending", 60)) -- a global: alive to the end
        print("HELD")
      ]], { URL = server.url })
      assert.matches("^HELD", p:wait(60))
      assert.is_false(exists("ending"))
    end)
  end)

  describe("keys", function()
    it("are binary-safe: NUL bytes make distinct keys", function()
      local a = assert(locker:obtain("bin\0a", 5))
      local b = assert(locker:obtain("bin\0b", 5))
      assert.equal("bin\0a", a:key())
      assert.equal("bin\0b", b:key())
      assert.equal("fluxalock.Lock: bin\0a (held)", tostring(a))
      assert.equal(1, server:call("EXISTS", "bin\0a"))
      assert.equal(a:token(), (server:call("GET", "bin\0a")):gsub("%+$", ""))
      assert.equal(0, server:call("EXISTS", "bin"))
      local again, err = locker:obtain("bin\0a", 5)
      assert.is_nil(again)
      assert.equal("not obtained", err)
      assert.is_true(a:refresh(1))
      assert.is_true(a:ttl() > 5)
      assert.is_true(a:release())
      assert.equal(0, server:call("EXISTS", "bin\0a"))
      assert.equal(1, server:call("EXISTS", "bin\0b"))
      assert.is_true(b:release())
    end)

    it("may be 1 MB long", function()
      local key = string.rep("k", 1024 * 1024 - 1) .. "\0"
      local lock = assert(locker:obtain(key, 5))
      assert.equal(key, lock:key())
      assert.equal(1, server:call("EXISTS", key))
      assert.is_nil((locker:obtain(key, 5)))
      assert.is_true(lock:ttl() > 4)
      assert.is_true(lock:refresh(1))
      assert.is_true(lock:release())
      assert.equal(0, server:call("EXISTS", key))
      -- released by __gc too
      do local _ = assert(locker:obtain(key, 60)) end
      collectgarbage()
      collectgarbage()
      assert.equal(0, server:call("EXISTS", key))
    end)
  end)
end)
