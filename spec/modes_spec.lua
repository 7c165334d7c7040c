-- Modes (API.md "Modes"): counting semaphores (limit), shared holds and
-- fair order, against a real redis-server, with real OS processes.  What a
-- section holds is counted in Redis (INCR/DECR of a counter key), never in
-- the processes' memory.
local R = require "support.redis"

local HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local S = dofile(HERE .. "support/scale.lua")

-- a process that takes key `rounds` times with opts, counts itself in
-- Redis inside the section, and prints what it saw
local function contender(url, key, rounds, opts, body)
  return R.child(([[
    -- the counters go through a connection of their own, not the lock's
    local counters = witness
    local opts = %s
    local bad, most, failures, done = 0, 0, {}, 0
    for _ = 1, %d do
      local lock, err = locker:obtain(%q, 10, 10, opts)
      if not lock then
        failures[#failures + 1] = tostring(err)
      else
        %s
        if lock:release() ~= true then failures[#failures + 1] = "release not true" end
        done = done + 1
      end
    end
    print(("DONE %%d %%d %%d %%d %%s"):format(done, bad, most, #failures, failures[1] or "-"))
  ]]):format(opts, rounds, key, body), { URL = url, WITNESS = url:match(":(%d+)/") })
end

local function finish(procs, rounds)
  local most = 0
  for i, p in ipairs(procs) do
    local out = p:wait(240)
    local done, bad, m, nfail, first = out:match("DONE (%d+) (%d+) (%d+) (%d+) (%S+)")
    assert.truthy(done, "process " .. i .. " did not finish: " .. out)
    assert.equal("0", nfail, "process " .. i .. " failed: " .. tostring(first))
    assert.equal("0", bad, "process " .. i .. " saw a section it must not share")
    assert.equal(tostring(rounds), done)
    most = math.max(most, tonumber(m))
  end
  return most
end

describe("modes", function()
  local server, fluxalock, locker
  R.setup({}, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  local until_true = R.until_true -- (a signal read from Redis)

  describe("limit", function()
    it("8 processes x 200 rounds on limit = 3: never more than 3 holders, and 3 at times", function()
      server:cli("DEL", "holders", "sem-full")
      local procs = {}
      -- until the holders have been 3 once (sem-full), a holder stays
      -- inside until they are, 3 s at most (then it lifts the wait for
      -- all): the processes start one by one, and on a loaded machine
      -- they could otherwise run nearly one at a time (seen: a most of 2).
      -- With a limit below 3 the most stays below 3; above it, a fourth
      -- holder counts as bad
      for i = 1, 8 do
        procs[i] = contender(server.url, "sem", 200, "{ limit = 3 }", [[
        local n = counters:call { "INCR", "holders" }
        if n > 3 then bad = bad + 1 end
        if n > most then most = n end
        if n >= 3 then counters:call { "SET", "sem-full", "1" } end
        local t = core.now()
        if most < 3 then
          while counters:call { "EXISTS", "sem-full" } == 0 and core.now() - t < 3 do core.sleep(0.005) end
          counters:call { "SET", "sem-full", "1" }
        end
        counters:call { "DECR", "holders" }]])
      end
      local most = finish(procs, 200)
      assert.equal(3, most, "the holders never reached the limit")
      assert.equal("0", server:cli("GET", "holders"))
      local i = locker:inspect("sem")
      assert.same({ mode = "free", holders = 0, waiting = 0, ttl = 0 }, i)
      assert.equal("0", server:cli("EXISTS", "sem"))
    end)

    it("gives out N permits, then not obtained; a release lets the next in; a double release is harmless", function()
      local a = assert(locker:obtain("sem-n", 5, 0, { limit = 2 }))
      local b = assert(locker:obtain("sem-n", 5, 0, { limit = 2 }))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-n", 5, 0, { limit = 2 }) })
      assert.is_true(a:release())
      assert.is_false(a:release())
      local c = assert(locker:obtain("sem-n", 5, 0, { limit = 2 }))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-n", 5, 0, { limit = 2 }) })
      local i = locker:inspect("sem-n")
      assert.equal("limit", i.mode)
      assert.equal(2, i.holders)
      assert.equal(2, i.limit)
      assert.is_true(i.ttl > 4 and i.ttl <= 5)
      -- refresh and ttl act on this holder's own hold only
      assert.is_true(c:refresh(10))
      assert.is_true(c:ttl() > 14)
      assert.is_true(b:ttl() <= 5)
      assert.is_true(c:refresh(2, { replace = true }))
      assert.is_true(c:ttl() <= 2)
      assert.is_true(locker:inspect("sem-n").ttl <= 5)
      assert.is_true(b:release())
      assert.is_true(c:release())
      assert.equal("free", locker:inspect("sem-n").mode)
    end)

    it("answers another limit with nil, message, \"limit\", from holders and from waiters", function()
      local a = assert(locker:obtain("sem-l", 5, 0, { limit = 2 }))
      local lock, err, code = locker:obtain("sem-l", 5, 0, { limit = 3 })
      assert.is_nil(lock)
      assert.equal("limit", code)
      assert.equal("fluxalock: obtain: limit 3 given, but the key's holders and waiters use limit 2", err)
      -- a waiting obtain with another limit also stops at once
      local t0 = R.now()
      lock, err, code = locker:obtain("sem-l", 5, 3, { limit = 1 })
      assert.is_nil(lock, err)
      assert.equal("limit", code)
      assert.is_true(R.now() - t0 < 1)
      assert.is_true(a:release())
      -- free again: any limit may start over
      assert.truthy(locker:obtain("sem-l", 5, 0, { limit = 7 })):release()
    end)

    it("gives a SIGKILLed holder's permits back at their ttl, not before", function()
      local p = R.child(([[
        local l = locker
        local a = assert(l:obtain("sem-k", 1.5, 0, { limit = 2 }))
        local b = assert(l:obtain("sem-k", 1.5, 0, { limit = 2 }))
        witness:call { "SET", "sem-k-ready", "1" }
        core.sleep(60)
      ]]), { URL = server.url, WITNESS = tostring(server.port) })
      until_true(function() return server:cli("GET", "sem-k-ready") == "1" end, 20, "the holder")
      -- t0 when the ttl left is read: the kill and the wait for the
      -- holder's end take time of that ttl too
      local left, t0 = locker:inspect("sem-k").ttl, R.now()
      p:signal("KILL")
      p:wait(10)
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-k", 5, 0, { limit = 2 }) })
      local lock = assert(locker:obtain("sem-k", 5, 4, { limit = 2 }))
      local took = R.now() - t0
      assert.is_true(took >= left - 0.05, ("permit back after %.3f s, ttl left was %.3f s"):format(took, left))
      assert.is_true(took < left + 1, ("permit back only after %.3f s"):format(took))
      assert.is_true(lock:release())
    end)

    it("a SIGKILLed waiter holds the next waiter up for at most about 1 s", function()
      local holder = assert(locker:obtain("sem-w", 20, 0, { limit = 1 }))
      local function waiter(name)
        return R.child(([[
          local l = locker
          local lock, err = l:obtain("sem-w", 15, 15, { limit = 1 })
          if lock then witness:call { "SET", "sem-w-got", %q } end
          print(lock and "GOT" or tostring(err))
          if lock then lock:release() end
        ]]):format(name), { URL = server.url, WITNESS = tostring(server.port) })
      end
      local dead = waiter("dead")
      until_true(function() return locker:inspect("sem-w").waiting == 1 end, 20, "the first waiter")
      local live = waiter("live")
      until_true(function() return locker:inspect("sem-w").waiting == 2 end, 20, "the second waiter")
      dead:signal("KILL")
      dead:wait(10)
      local t0 = R.now()
      assert.is_true(holder:release())
      until_true(function() return server:cli("GET", "sem-w-got") == "live" end, 10, "the live waiter")
      local took = R.now() - t0
      assert.equal("GOT\n", live:wait(10))
      assert.is_true(took < 1.25, ("the live waiter got in %.3f s after the release"):format(took))
      assert.equal(0, locker:inspect("sem-w").waiting)
    end)

    it("a waiter that gives up leaves the queue at once", function()
      local held = assert(locker:obtain("sem-g", 5, 0, { limit = 1 }))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-g", 1, 0.2, { limit = 1 }) })
      assert.equal(0, locker:inspect("sem-g").waiting)
      assert.is_true(held:release())
    end)

    it("a plain fluxalock lock and a redis-py Lock exclude every permit, both ways", function()
      local plain = assert(locker:obtain("sem-p", 5))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-p", 5, 0, { limit = 5 }) })
      assert.equal("exclusive", locker:inspect("sem-p").mode)
      assert.is_true(plain:release())
      local permit = assert(locker:obtain("sem-p", 5, 0, { limit = 5 }))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("sem-p", 5) })
      local py = assert(io.popen(("/usr/bin/python3 %ssupport/interop_redispy.py try %d sem-p 2>&1")
        :format(HERE, server.port)))
      local out = py:read("a")
      py:close()
      assert.equal("ACQUIRED False\n", out)
      assert.is_true(permit:release())
      -- redis-py holds: the permit waits (in BLPOP) until it releases
      py = assert(io.popen(("/usr/bin/python3 %ssupport/interop_redispy.py hold %d sem-p 2>&1")
        :format(HERE, server.port)))
      assert.equal("HELD True", py:read("l"))
      local lock, err = locker:obtain("sem-p", 5, 4, { limit = 5 })
      out = py:read("a")
      py:close()
      assert.truthy(lock, tostring(err) .. " " .. out)
      assert.truthy(out:find("VALUE same", 1, true), out)
      assert.truthy(out:find("RELEASED", 1, true), out)
      assert.is_true(lock:release())
    end)

    it("renews a permit, releases it on __gc, and keeps the fence increasing over every mode", function()
      local fences = {}
      local p = assert(locker:obtain("sem-r", 5))
      fences[#fences + 1] = p:fence()
      p:release()
      local a = assert(locker:obtain("sem-r", 0.3, 0, { limit = 2, renew = true }))
      fences[#fences + 1] = a:fence()
      until_true(function() return a:ttl() > 0 and R.now() > 0 end, 1, "a ttl")
      local t0 = R.now()
      until_true(function() return R.now() - t0 > 0.9 end, 2, "three ttls") -- the renewal's work
      assert.is_true(a:held())
      assert.equal(1, locker:inspect("sem-r").holders)
      local s = assert(locker:obtain("sem-s", 5, 0, { shared = true }))
      fences[#fences + 1] = s:fence()
      a = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.is_true(s:release()) -- the next request sends the deferred release
      assert.equal("free", locker:inspect("sem-r").mode)
      local f = assert(locker:obtain("sem-r", 5, 0, { fair = true }))
      fences[#fences + 1] = f:fence()
      f:release()
      for i = 2, #fences do assert.is_true(fences[i] > fences[i - 1]) end
    end)

    it("raises on bad options, naming argument #4", function()
      local cases = {
        { { limit = 0 }, "option 'limit' must be an integer from 1 to 100000, got 0" },
        { { limit = 100001 }, "option 'limit' must be an integer from 1 to 100000, got 100001" },
        { { limit = 2.5 }, "option 'limit' must be an integer from 1 to 100000, got 2.5" },
        { { limit = "2" }, "option 'limit' must be an integer from 1 to 100000, got string" },
        { { shared = 1 }, "option 'shared' must be a boolean, got number" },
        { { fair = "yes" }, "option 'fair' must be a boolean, got string" },
        { { limit = 2, shared = true }, "options 'shared' and 'limit' exclude each other" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(locker.obtain, locker, "bad", 1, 0, c[1])
        assert.is_false(ok)
        assert.equal("bad argument #4 to 'obtain' (" .. c[2] .. ")", err:gsub("^[^:]*:%d+: ", ""))
      end
    end)
  end)

  describe("shared", function()
    it("readers overlap, a writer never overlaps anyone (4 readers, 2 writers)", function()
      server:cli("DEL", "r", "w")
      local procs = {}
      for i = 1, 4 do
        -- until it has seen another reader inside, a reader stays in (3 s
        -- in all at most) until one comes: overlapping is then what shared
        -- holds do, not a chance of the scheduler (4 x 100 short rounds on a
        -- loaded machine once ran one at a time); with exclusive holds
        -- nobody could come in, and the wait runs out
        procs[i] = contender(server.url, "rw", 100, "{ shared = true }", [[
        local n = counters:call { "INCR", "r" }
        if n > most then most = n end
        budget = budget or core.now() + 3
        while most < 2 and core.now() < budget do
          core.sleep(0.005)
          most = math.max(most, tonumber(counters:call { "GET", "r" }))
        end
        if counters:call { "GET", "w" } ~= "0" and counters:call { "GET", "w" } then bad = bad + 1 end
        counters:call { "DECR", "r" }]])
      end
      for i = 5, 6 do
        procs[i] = contender(server.url, "rw", 30, "{ shared = false }", [[
        if counters:call { "INCR", "w" } ~= 1 then bad = bad + 1 end
        if (tonumber(counters:call { "GET", "r" }) or 0) > 0 then bad = bad + 1 end
        counters:call { "DECR", "w" }]])
      end
      local readers = finish({ procs[1], procs[2], procs[3], procs[4] }, 100)
      finish({ procs[5], procs[6] }, 30)
      assert.is_true(readers >= 2, "the readers never overlapped")
    end)

    it("a writer gets in while readers keep coming, and the readers queued behind it enter together", function()
      -- three readers take turns so that a shared hold is always there,
      -- until the spec is done (rw-f:stop), not for a time of their own: a
      -- loaded machine's late start must not end one before it queues
      server:cli("DEL", "rw-f:stop")
      finally(function() server:cli("SET", "rw-f:stop", "1") end) -- also when a check fails
      local readers = {}
      for i = 1, 3 do
        readers[i] = R.child(([[
          local l = locker
          local t = core.now() + 60
          local n = 0
          while core.now() < t and witness:call { "EXISTS", "rw-f:stop" } == 0 do
            local lock = l:obtain("rw-f", 1, 1, { shared = true })
            if lock then
              n = n + 1
              witness:call { "INCR", "rw-f-reads" }
              core.sleep(0.2 + %d * 0.05)
              lock:release()
            end
          end
          print("READS", n)
        ]]):format(i), { URL = server.url, WITNESS = tostring(server.port) })
      end
      until_true(function() return locker:inspect("rw-f").holders >= 2 end, 20, "overlapping readers")
      local t0 = R.now()
      local w = assert(locker:obtain("rw-f", 5, 3, { shared = false }))
      local took = R.now() - t0
      assert.is_true(took < 1, ("the writer waited %.3f s, more than a reader's ttl"):format(took))
      assert.equal("exclusive", locker:inspect("rw-f").mode)
      until_true(function() return locker:inspect("rw-f").waiting == 3 end, 10, "the readers to queue")
      assert.is_true(w:release())
      until_true(function()
        local i = locker:inspect("rw-f")
        return i.mode == "shared" and i.holders == 3
      end, 1, "the three queued readers inside together")
      server:cli("SET", "rw-f:stop", "1")
      for _, r in ipairs(readers) do local out = r:wait(30) assert.truthy(out:find("READS%s%d+"), out) end
    end)

    it("an obtain without options waits as a writer: later readers wait behind it; it gets a plain lock", function()
      local r = assert(locker:obtain("rw-w", 10, 0, { shared = true }))
      local p = R.child(([[
        local l = locker
        local lock, err = l:obtain("rw-w", 10, 10)
        if not lock then print(tostring(err)) return end
        print("GOT", lock:token() == witness:call { "GET", "rw-w" })
        witness:call { "SET", "rw-w-got", "1" }
        local t = core.now() + 5
        while witness:call { "GET", "rw-w-done" } ~= "1" and core.now() < t do
          core.sleep(0.01)
        end
        print("RELEASED", lock:release())
      ]]), { URL = server.url, WITNESS = tostring(server.port) })
      until_true(function() return locker:inspect("rw-w").waiting == 1 end, 20, "the plain waiter")
      -- a reader that comes now waits behind it
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("rw-w", 5, 0, { shared = true }) })
      assert.is_true(r:release())
      until_true(function() return server:cli("GET", "rw-w-got") == "1" end, 10, "the plain waiter's lock")
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("rw-w", 5, 0, { shared = true }) })
      server:cli("SET", "rw-w-done", "1")
      assert.equal("GOT\ttrue\nRELEASED\ttrue\n", p:wait(10))
      assert.truthy(locker:obtain("rw-w", 5, 0, { shared = true })):release()
    end)

    it("a redis-py Lock excludes readers and writers, both ways", function()
      local s = assert(locker:obtain("rw-p", 5, 0, { shared = true }))
      local py = assert(io.popen(("/usr/bin/python3 %ssupport/interop_redispy.py try %d rw-p 2>&1")
        :format(HERE, server.port)))
      assert.equal("ACQUIRED False\n", py:read("a"))
      py:close()
      assert.is_true(s:release())
      py = assert(io.popen(("/usr/bin/python3 %ssupport/interop_redispy.py hold %d rw-p 2>&1")
        :format(HERE, server.port)))
      assert.equal("HELD True", py:read("l"))
      assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("rw-p", 5, 0, { shared = false }) })
      local lock, err = locker:obtain("rw-p", 5, 4, { shared = true })
      local out = py:read("a")
      py:close()
      assert.truthy(lock, tostring(err) .. " " .. out)
      assert.is_true(lock:release())
    end)
  end)

  describe("fair", function()
    it("8 processes started one after another on a held key obtain in their order of arrival", function()
      local held = assert(locker:obtain("fair", 20, 0, { fair = true }))
      server:cli("DEL", "fair-order")
      local procs = {}
      for i = 1, 8 do
        procs[i] = R.child(([[
          local l = locker
          local lock, err = l:obtain("fair", 15, 15, { fair = true })
          if lock then
            witness:call { "RPUSH", "fair-order", "%d" }
            lock:release()
          end
          print(lock and "GOT" or tostring(err))
        ]]):format(i), { URL = server.url, WITNESS = tostring(server.port) })
        until_true(function() return locker:inspect("fair").waiting == i end, 20, "waiter " .. i)
      end
      assert.is_true(held:release())
      for _, p in ipairs(procs) do assert.equal("GOT\n", p:wait(30)) end
      assert.equal("1\n2\n3\n4\n5\n6\n7\n8", server:cli("LRANGE", "fair-order", "0", "-1"))
    end)
  end)

  describe("fair under contention", function()
    -- the order itself is the case above's (it fails without fair).  This
    -- one once also counted a waiter "overtaken" when one whose ticket was
    -- 50 ms older still waited: under two suites at once a process stalled
    -- that long between its ticket and its obtain (and failed it), and
    -- with fair off the count stayed 0 in two runs of three, so it told
    -- little either way
    it("8 processes x 200 rounds: every obtain succeeds and the top share is at most 0.15", function()
      server:cli("DEL", "grants", "ready")
      local procs = {}
      for i = 1, 8 do
        procs[i] = R.child(([[
          local l = locker
          local c = witness
          local failures, done = 0, 0
          -- all eight start together (a process started first would
          -- otherwise take its first rounds alone)
          c:call { "INCR", "ready" }
          while tonumber(c:call { "GET", "ready" }) < 8 do core.sleep(0.002) end
          for _ = 1, 200 do
            local lock = l:obtain("fair-c", 10, 10, { fair = true })
            if lock then
              c:call { "RPUSH", "grants", %d }
              lock:release()
              done = done + 1
            else
              failures = failures + 1
            end
          end
          print(("DONE %%d %%d"):format(done, failures))
        ]]):format(i), { URL = server.url, WITNESS = tostring(server.port) })
      end
      for i, p in ipairs(procs) do
        local out = p:wait(240)
        local done, failures = out:match("DONE (%d+) (%d+)")
        assert.equal("200", done, "process " .. i .. ": " .. out)
        assert.equal("0", failures)
      end
      -- shares while all eight contend: the first 1200 grants (an even
      -- share is 150 each; none can have finished its 200 before that
      -- without a share above 0.15 -- a window that ended at the first
      -- process's last grant would pick the busiest one by itself)
      local grants, count = {}, {}
      for g in server:cli("LRANGE", "grants", "0", "-1"):gmatch("%d+") do grants[#grants + 1] = g end
      assert.equal(1600, #grants)
      local upto = 1200
      for i = 1, upto do count[grants[i]] = (count[grants[i]] or 0) + 1 end
      local top = 0
      for _, n in pairs(count) do top = math.max(top, n / upto) end
      assert.is_true(top <= 0.15, ("top share %.3f over the first %d grants"):format(top, upto))
    end)
  end)

  describe("a Redis user with the ACL of docs/reliability.md", function()
    it("runs every mode, inspect included", function()
      assert.equal("OK", server:cli("ACL", "SETUSER", "flmodes", "on", ">pw", "resetkeys", "~app:*", "resetchannels",
        "-@all", "+evalsha", "+eval", "+blpop", "+select", "+ping", "+get", "+set", "+del", "+incr", "+lpush",
        "+pexpire", "+pttl", "+time", "+zadd", "+zrem", "+zrange", "+zscore", "+zcard", "+zcount",
        "+zremrangebyscore", "+hget", "+hset", "+hdel", "+hincrby"))
      local l = fluxalock.locker { url = ("redis://flmodes:pw@127.0.0.1:%d/0"):format(server.port), prefix = "app:" }
      local a = assert(l:obtain("acl", 5, 0, { limit = 2, renew = true }))
      local b = assert(l:obtain("acl", 5, 0.1, { limit = 2 }))
      assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("acl", 5, 0.1, { limit = 2 }) })
      assert.equal("limit", select(3, l:obtain("acl", 5, 0, { limit = 3 })))
      assert.is_true(a:refresh(3))
      assert.equal(2, assert(l:inspect("acl")).holders)
      assert.is_true(a:release())
      assert.is_true(b:release())
      local s = assert(l:obtain("acl", 5, 0, { shared = true }))
      assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("acl", 5, 0.1) })
      assert.is_true(s:release())
      assert.is_true(assert(l:obtain("acl", 5, 0, { fair = true })):release())
    end)
  end)

  describe("inspect", function()
    it("tells a free key, a foreign holder and each mode", function()
      assert.same({ mode = "free", holders = 0, waiting = 0, ttl = 0 }, locker:inspect("ins"))
      server:cli("SET", "ins", "not-a-token", "PX", "3000")
      local i = locker:inspect("ins")
      assert.equal("foreign", i.mode)
      assert.equal(1, i.holders)
      assert.is_true(i.ttl > 2 and i.ttl <= 3)
      -- other clients' tokens in the form of fluxalock's before 0.3 (32 hex
      -- digits): redis-py's Lock (uuid1().hex) and node-redlock (16 random
      -- bytes); and 40 hex digits without fluxalock's mark
      for _, v in ipairs { "6f1c2b3e9a4f11efb3a20242ac120002", "c4ca4238a0b923820dcc509a6f75849b",
                           "c4ca4238a0b923820dcc509a6f75849b00000000" } do
        server:cli("SET", "ins", v, "PX", "3000")
        assert.equal("foreign", locker:inspect("ins").mode, v)
      end
      server:cli("DEL", "ins")
      local p = assert(locker:obtain("ins", 5))
      assert.same({ mode = "exclusive", holders = 1, waiting = 0 },
        (function(t) t.ttl = nil return t end)(locker:inspect("ins")))
      p:release()
      local s1 = assert(locker:obtain("ins", 5, 0, { shared = true }))
      local s2 = assert(locker:obtain("ins", 4, 0, { shared = true }))
      i = locker:inspect("ins")
      assert.equal("shared", i.mode)
      assert.equal(2, i.holders)
      assert.is_nil(i.limit)
      s1:release()
      s2:release()
      local x = assert(locker:obtain("ins", 5, 0, { shared = false }))
      assert.equal("exclusive", locker:inspect("ins").mode)
      x:release()
      assert.has_error(function() locker:inspect(3) end,
        "bad argument #1 to 'inspect' (key must be a string, got number)")
    end)
  end)
end)

-- 2000 coroutines of one event loop in a child process, each taking the
-- key once in the given mode and holding it ARGS.hold s; the counters in Redis
-- tell how many were inside at once; the sampler counts the pool's
-- connections from the server's CLIENT LIST
local HOSTED = [[
  -- timeout 10: a request's timeout counts from its call, and the tail of
  -- 2000 queued requests on a loaded machine's ASan build can pass 1 s
  local d, _, locker = S.hosted(SERVER, ARGS.host, { timeout = 10 })
  local counter = S.counter(SERVER, d)
  local st = { obtained = 0, released = 0, most = 0, over = 0, failed = {} }
  for i = 1, ARGS.n do
    d.spawn(function()
      local shared = ARGS.writers and i % ARGS.writers ~= 0
      local opts = ARGS.limit and { limit = ARGS.limit } or { shared = shared }
      local lock, err = locker:obtain("hosted", 60, 60, opts)
      if not lock then
        if #st.failed < 5 then st.failed[#st.failed + 1] = tostring(err) end
        return
      end
      st.obtained = st.obtained + 1
      local c = S.count(d, counter, "INCR", shared and "readers" or "inside")
      if not shared and c > st.most then st.most = c end
      if ARGS.limit and c > ARGS.limit then st.over = st.over + 1 end
      if not ARGS.limit then
        -- a writer alone; a reader beside no writer
        local other = S.count(d, counter, shared and "GET" or "GET", shared and "inside" or "readers")
        if (tonumber(other) or 0) > 0 then st.over = st.over + 1 end
        if shared and c > st.most then st.most = c end
      end
      d.sleep(ARGS.hold)
      S.count(d, counter, "DECR", shared and "readers" or "inside")
      if lock:release() == true then st.released = st.released + 1 end
    end)
  end
  st.finished = d.run(150)
  st.errors = d.errors
  return st
]]

describe("modes under event-loop hosts", function()
  for _, host in ipairs { "luv", "cqueues" } do
    local function hosted(args)
      local server = R.start()
      local sampler
      local ok, res = pcall(function()
        sampler = S.sampler(server, 5)
        args.host = host
        return S.child(server, HOSTED, args, 200)
      end)
      if sampler then sampler.stop() end
      server:stop()
      assert(ok, res)
      assert.is_true(sampler.max <= 5, "connections: " .. tostring(sampler.max))
      assert.is_true(sampler.max >= 1 and sampler.samples >= 3)
      assert.is_true(res.finished, "the loop was still running after its limit")
      assert.same({}, res.errors)
      assert.same({}, res.failed)
      assert.equal(args.n, res.obtained)
      assert.equal(args.n, res.released)
      assert.equal(0, res.over)
      return res
    end

    it(host .. ": 2000 coroutines on limit = 3: never more than 3 inside, 3 at times, "
      .. "over at most max_connections + 1 connections", function()
      -- (a permit's grant kicks the next local waiter, which tries at once:
      -- the permits fill within the 1 ms holds)
      local res = hosted { n = 2000, limit = 3, hold = 0.001 }
      assert.equal(3, res.most)
    end)

    it(host .. ": 2000 coroutines, one in 50 a writer: readers overlap, a writer is alone", function()
      local res = hosted { n = 2000, writers = 50, hold = 0.001 }
      assert.is_true(res.most >= 2, "the readers never overlapped")
    end)
  end
end)

-- Faults of the Redis process in every mode: every call returns within its
-- deadline, and afterwards the exclusion still holds
describe("modes when Redis fails", function()
  local MODES = { { limit = 2 }, { shared = true }, { shared = false }, { fair = true } }

  local function timed(f)
    local t = R.now()
    local r = table.pack(f())
    return R.now() - t, table.unpack(r, 1, r.n)
  end

  local function name(o) return next(o) .. "=" .. tostring(o[next(o)]) end

  it("SIGSTOPped past the holders' ttl: calls time out on time; thawed, the expired holds are gone", function()
    local server = R.start()
    finally(function() server:stop() end)
    local fl = R.fluxalock(server, { timeout = 0.3 })
    local locker = fl.locker()
    for i, o in ipairs(MODES) do
      local key = "stop" .. i
      local held = assert(locker:obtain(key, 1, 0, o))
      server:pause()
      local dt, lock, err = timed(function() return locker:obtain(key, 2, 1, o) end)
      assert.is_nil(lock, name(o))
      assert.matches("timed out", err, 1, true)
      assert.is_true(dt < 1 + 0.3 + 0.5, ("%s: obtain took %.2f s"):format(name(o), dt))
      dt = timed(function() return held:ttl() end)
      assert.is_true(dt < 0.3 + 0.5, ("%s: ttl took %.2f s"):format(name(o), dt))
      -- frozen past the holder's ttl (the server's clock goes on meanwhile)
      local t = R.now() + 1.2
      while R.now() < t do require("fluxalock.core").sleep(0.05) end
      server:resume()
      assert.equal(0, held:ttl(), name(o))
      -- the obtain that timed out ran once the server was thawed, and may
      -- hold a permit nobody knows of: it expires by its own ttl (2 s)
      local lock2 = assert(locker:obtain(key, 5, 3, o))
      local again = locker:obtain(key, 5, o.limit and 3 or 0, o)
      if o.limit then
        assert.truthy(again, name(o))
        assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain(key, 5, 0, o) })
        again:release()
      elseif o.shared then
        assert.truthy(again, name(o))
        again:release()
      else
        assert.is_nil(again, name(o))
      end
      assert.is_true(lock2:release())
      -- and a late hold of the thawed obtain goes by its ttl
      R.until_true(function() return locker:inspect(key).mode == "free" end, 3, name(o) .. " free")
    end
  end)

  it("SIGKILLed and restarted without its data: calls fail at once, then every mode works again", function()
    local server = R.start()
    finally(function() server:stop() end)
    local fl = R.fluxalock(server, { timeout = 0.5, connect_timeout = 0.5 })
    local locker = fl.locker()
    local held = {}
    for i, o in ipairs(MODES) do held[i] = assert(locker:obtain("kill" .. i, 30, 0, o)) end
    server:kill()
    for i, o in ipairs(MODES) do
      local dt, lock, err = timed(function() return locker:obtain("kill" .. i, 2, 1, o) end)
      assert.is_nil(lock, name(o))
      assert.matches("^fluxalock: ", err)
      assert.is_true(dt < 1 + 0.5 + 0.5, ("%s: obtain took %.2f s"):format(name(o), dt))
    end
    server:restart()
    for i, o in ipairs(MODES) do
      assert.is_false(held[i]:release(), name(o)) -- its hold went with the data
      local a = assert(locker:obtain("kill" .. i, 5, 0, o))
      local b = locker:obtain("kill" .. i, 5, 0, o)
      assert.equal(o.limit ~= nil or o.shared == true, b ~= nil, name(o))
      if b then b:release() end
      assert.is_true(a:release())
    end
  end)
end)
