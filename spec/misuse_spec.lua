-- Misuse raises a luaL_argerror-style error naming the argument; it never
-- returns nil, message, and never touches Redis.
local R = require "support.redis"

describe("misuse", function()
  local server, locker
  R.setup({}, function(e) server, locker = e.server, e.locker end)

  -- the error raised by f(...), without a "file:line: " position
  local function raised(f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error, got none")
    assert.equal("string", type(err))
    return (err:gsub("^[^\n]-:%d+: ", ""))
  end

  -- called as a user writes it (a method call from Lua code), so that the
  -- message can name the function
  local function obtain_error(...)
    local args = table.pack(...)
    return raised(function() local r = locker:obtain(table.unpack(args, 1, args.n)) return r end)
  end
  local function refresh_error(lock, ...)
    local args = table.pack(...)
    return raised(function() local r = lock:refresh(table.unpack(args, 1, args.n)) return r end)
  end

  describe("of obtain", function()
    local cases = {
      { "a key that is not a string", { 5, 1 },
        "bad argument #1 to 'obtain' (key must be a string, got number)" },
      { "a missing key", { nil, 1 },
        "bad argument #1 to 'obtain' (key must be a string, got nil)" },
      { "a table key", { {}, 1 },
        "bad argument #1 to 'obtain' (key must be a string, got table)" },
      { "an empty key", { "", 1 },
        "bad argument #1 to 'obtain' (key must not be empty)" },
      { "a missing ttl", { "k" },
        "bad argument #2 to 'obtain' (ttl must be a number of seconds, got nil)" },
      { "a ttl given as a string", { "k", "5" },
        "bad argument #2 to 'obtain' (ttl must be a number of seconds, got string)" },
      { "a zero ttl", { "k", 0 },
        "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "a negative ttl", { "k", -5 },
        "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "a ttl below a millisecond", { "k", 0.0004 },
        "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "a NaN ttl", { "k", 0 / 0 },
        "bad argument #2 to 'obtain' (ttl must not be NaN)" },
      { "an infinite ttl", { "k", math.huge },
        "bad argument #2 to 'obtain' (ttl must not exceed 1e9 seconds)" },
      { "a wait given as a string", { "k", 5, "1" },
        "bad argument #3 to 'obtain' (wait timeout must be a number of seconds, got string)" },
      { "a boolean wait", { "k", 5, true },
        "bad argument #3 to 'obtain' (wait timeout must be a number of seconds, got boolean)" },
      { "a negative wait", { "k", 5, -1 },
        "bad argument #3 to 'obtain' (wait timeout must not be negative)" },
      { "a NaN wait", { "k", 5, 0 / 0 },
        "bad argument #3 to 'obtain' (wait timeout must not be NaN)" },
      { "wait > ttl", { "k", 1, 2 },
        "bad argument #3 to 'obtain' (wait timeout must not exceed ttl)" },
      { "an infinite wait", { "k", 5, math.huge },
        "bad argument #3 to 'obtain' (wait timeout must not exceed ttl)" },
    }
    for _, case in ipairs(cases) do
      it("raises for " .. case[1], function()
        local args = case[2]
        assert.equal(case[3], obtain_error(args[1], args[2], args[3]))
      end)
    end

    it("points the error at the caller's line", function()
      local ok, err = pcall(function()
        local lock = locker:obtain("k", 1, 2) -- not a tail call: keep the frame
        return lock
      end)
      assert.is_false(ok)
      assert.matches("misuse_spec%.lua:%d+: bad argument #3 to 'obtain'", err)
    end)

    it("raises for a call on something that is not a locker", function()
      -- the wording Lua's own luaL_argerror uses for a bad self
      assert.equal("calling 'obtain' on bad self (fluxalock.Locker expected, got table)",
        raised(function() local r = locker.obtain({}, "k", 1) return r end))
      assert.equal("calling 'obtain' on bad self (fluxalock.Locker expected, got string)",
        raised(function() local r = locker.obtain("k", 1) return r end))
      assert.equal("calling 'close' on bad self (fluxalock.Locker expected, got number)",
        raised(function() locker.close(5) end))
    end)

    it("accepts the edges: a 1 ms ttl, wait equal to ttl, wait 0", function()
      local a = assert(locker:obtain("edge-1ms", 0.001))
      assert.equal("userdata", type(a))
      local b = assert(locker:obtain("edge-eq", 0.5, 0.5))
      b:release()
      local c = assert(locker:obtain("edge-zero", 0.5, 0))
      c:release()
    end)

    it("sends nothing to Redis", function()
      -- every command the server ran, by name (keys may expire meanwhile,
      -- so the key count would not do)
      local function calls()
        local n = 0
        for c in server:cli("INFO", "commandstats"):gmatch("cmdstat_[%w|]+:calls=(%d+)") do n = n + tonumber(c) end
        return n
      end
      local before = calls()
      pcall(locker.obtain, locker, "untouched", 1, 2)
      pcall(locker.obtain, locker, "untouched", 0)
      pcall(locker.obtain, locker, "", 1)
      -- only the INFO that read 'before' ran since
      assert.equal(before + 1, calls())
      assert.equal("0", server:cli("EXISTS", "untouched"))
    end)
  end)

  describe("of a lock's methods", function()
    local lock
    before_each(function() lock = assert(locker:obtain("methods", 10)) end)
    after_each(function() lock:release() end)

    it("raises for a method called on a non-lock", function()
      for _, m in ipairs { "release", "ttl", "refresh", "key", "token", "held", "fence" } do
        -- written as a user would: lock.release(5)
        local call = assert(load(("local lock = ... local r = lock.%s(select(2, ...)) return r"):format(m)))
        assert.equal(("bad argument #1 to '%s' (fluxalock.Lock expected, got number)"):format(m),
          raised(call, lock, 5))
        assert.equal(("bad argument #1 to '%s' (fluxalock.Lock expected, got table)"):format(m),
          raised(call, lock, {}))
        assert.equal(("bad argument #1 to '%s' (fluxalock.Lock expected, got no value)"):format(m),
          raised(call, lock))
      end
      -- a locker is not a lock either
      assert.equal("bad argument #1 to 'release' (fluxalock.Lock expected, got fluxalock.Locker)",
        raised(function() local r = lock.release(locker) return r end))
      -- the lock itself was not affected
      assert.is_true(lock:held())
    end)

    it("raises for a bad refresh ttl, naming it", function()
      assert.equal("bad argument #1 to 'refresh' (ttl must be a number of seconds, got string)",
        refresh_error(lock, "5"))
      assert.equal("bad argument #1 to 'refresh' (ttl must be a number of seconds, got no value)",
        refresh_error(lock))
      assert.equal("bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)",
        refresh_error(lock, 0))
      assert.equal("bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)",
        refresh_error(lock, -1))
      assert.equal("bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)",
        refresh_error(lock, 0.0009))
      assert.equal("bad argument #1 to 'refresh' (ttl must not be NaN)",
        refresh_error(lock, 0 / 0))
      assert.matches("^bad argument #1 to 'refresh' %(ttl must not exceed",
        refresh_error(lock, math.huge))
    end)

    it("raises for bad refresh options, naming them", function()
      assert.equal("bad argument #2 to 'refresh' (table or nil expected, got number)",
        refresh_error(lock, 1, 5))
      assert.equal("bad argument #2 to 'refresh' (unknown option 'replce')",
        refresh_error(lock, 1, { replce = true }))
      assert.equal("bad argument #2 to 'refresh' (option 'replace' must be a boolean)",
        refresh_error(lock, 1, { replace = "yes" }))
    end)

    it("raises for misuse even on a lost lock (validation comes first)", function()
      lock:release()
      assert.matches("^bad argument #1 to 'refresh'", refresh_error(lock, -1))
      assert.matches("^bad argument #2 to 'refresh'", refresh_error(lock, 1, { bogus = 1 }))
    end)

    it("keeps the lock's time left unchanged by a refused refresh", function()
      local before = lock:ttl()
      pcall(lock.refresh, lock, 0)
      pcall(lock.refresh, lock, 100, { replace = "yes" })
      local after = lock:ttl()
      assert.is_true(after <= before and after > before - 1)
    end)
  end)
end)
