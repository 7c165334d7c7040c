-- locker:once(key, ttl, wait, fn, ...): single flight (API.md "Single
-- flight", docs/once.md).  In a plain script, and under the cqueues and luv
-- hosts with real coroutines, against a real redis-server.
local core = require "fluxalock.core"
local R = require "support.redis"
local H = require "support.hosts"

-- what a call returned, packed; a raise is { raised = value }
local function call(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then return { raised = r[2] } end
  return table.pack(table.unpack(r, 2, r.n))
end

describe("locker:once", function()
  local server, fluxalock
  R.setup({ locker = false, teardown = function(e) e.fluxalock.configure { host = false } end },
    function(e) server, fluxalock = e.server, e.fluxalock end)

  describe("in a plain script (no host)", function()
    before_each(function() fluxalock.configure { host = false } end)

    it("calls fn with its arguments, returns every value (nils too) and releases the lock", function()
      local locker = fluxalock.locker()
      local seen
      local r = call(locker.once, locker, "once:plain", 5, 1, function(...)
        seen = table.pack(...)
        seen.held = server:cli("EXISTS", "once:plain")
        return nil, "b", nil
      end, 1, nil, "x")
      assert.same({ n = 3, [2] = "b" }, r)
      assert.same({ n = 3, 1, nil, "x", held = "1" }, seen)
      assert.equal("0", server:cli("EXISTS", "once:plain"))
    end)

    it("keeps the lock alive while fn runs past the ttl", function()
      local locker = fluxalock.locker()
      local during = locker:once("once:long", 0.3, 0, function()
        core.sleep(0.7)
        return server:cli("EXISTS", "once:long")
      end)
      assert.equal("1", during)
      assert.equal("0", server:cli("EXISTS", "once:long"))
    end)

    it("raises fn's very error value and releases the lock", function()
      local locker = fluxalock.locker()
      local e = { "boom" }
      local r = call(locker.once, locker, "once:raise", 5, 0, function() error(e) end)
      assert.equal(e, r.raised)
      assert.equal("0", server:cli("EXISTS", "once:raise"))
      r = call(locker.once, locker, "once:raise", 5, 0, function() error("text") end)
      assert.matches("once_spec.lua:%d+: text$", r.raised)
    end)

    it("a lock held elsewhere: nil, 'not obtained', 'not_obtained' after the wait, fn not called", function()
      local locker = fluxalock.locker()
      local holder = assert(locker:obtain("once:held", 5))
      local called = false
      local t0 = core.now()
      local r = call(locker.once, locker, "once:held", 5, 0.2, function() called = true end)
      local took = core.now() - t0
      assert.same({ n = 3, [2] = "not obtained", [3] = "not_obtained" }, r)
      assert.is_false(called)
      assert.is_true(took >= 0.2 and took < 2, ("took %.2f s"):format(took))
      assert.is_true(holder:release())
    end)

    it("a runtime failure returns what obtain returned", function()
      local port = R.free_port()
      local locker = fluxalock.locker(("redis://127.0.0.1:%d/0"):format(port))
      local r = call(locker.once, locker, "once:down", 5, 0, function() return 1 end)
      assert.is_nil(r[1])
      assert.matches("^fluxalock: ", r[2])
      assert.is_nil(r.raised)
    end)

    it("fn calling once for its own key raises instead of waiting for itself", function()
      local locker = fluxalock.locker()
      local r = call(locker.once, locker, "once:again", 5, 1, function()
        return locker:once("once:again", 5, 1, function() return "inner" end)
      end)
      assert.matches("bad argument #1 to 'once' %(.*wait for itself%)", r.raised)
      assert.equal("0", server:cli("EXISTS", "once:again"))
      -- another key from inside fn is fine
      assert.equal("inner", locker:once("once:outer", 5, 1, function()
        return locker:once("once:inner", 5, 1, function() return "inner" end)
      end))
    end)

    it("misuse raises naming the argument", function()
      local locker = fluxalock.locker()
      local f = function() end
      assert.error_matches(function() locker:once("k", 5, 1, 42) end,
        "bad argument #4 to 'once' %(fn must be callable, got number%)")
      assert.error_matches(function() locker:once("k", 5, 1) end, "bad argument #4 to 'once'")
      assert.error_matches(function() locker:once("", 5, 1, f) end, "bad argument #1 to 'once' %(key must not be empty%)")
      assert.error_matches(function() locker:once(1, 5, 1, f) end, "bad argument #1 to 'once'")
      assert.error_matches(function() locker:once("k", 0, 0, f) end, "bad argument #2 to 'once'")
      assert.error_matches(function() locker:once("k", 5, -1, f) end, "bad argument #3 to 'once'")
      assert.error_matches(function() locker:once("k", 5, "x", f) end, "bad argument #3 to 'once'")
      assert.error_matches(function() locker.once({}, "k", 5, 1, f) end, "calling 'once' on bad self")
      -- the message points at the caller's line
      for _, args in ipairs { { "k", 5, 1, 42 }, { "k", -5, 1, f }, { "k", 5, 1e10, f } } do
        local ok, err = pcall(function() locker:once(table.unpack(args, 1, 4)) end)
        assert.is_false(ok)
        assert.matches("^[^:]*once_spec.lua:%d+: bad argument #%d to 'once'", err)
      end
      -- a callable table is callable
      local obj = setmetatable({}, { __call = function(_, a) return a * 2 end })
      assert.equal(42, locker:once("once:callable", 5, 0, obj, 21))
    end)
  end)

  describe("under a host with wait only (no park, unpark)", function()
    it("callers that come while one runs look again each retry step and share its values", function()
      local host = { wait = function() coroutine.yield() end } -- resumed at the scheduler's next round
      fluxalock.configure { host = host }
      local locker = fluxalock.locker()
      local calls, got, cos = 0, {}, {}
      for i = 1, 10 do
        cos[i] = coroutine.create(function()
          got[i] = call(locker.once, locker, "once:custom", 5, 3, function()
            calls = calls + 1
            local t0 = core.now()
            while core.now() - t0 < 0.05 do coroutine.yield() end -- work that yields to the loop
            return "value", i
          end)
        end)
      end
      -- a round-robin scheduler
      local deadline = core.now() + 10
      repeat
        local live = 0
        for _, co in ipairs(cos) do
          if coroutine.status(co) == "suspended" then
            assert(coroutine.resume(co))
            if coroutine.status(co) == "suspended" then live = live + 1 end
          end
        end
        if live > 0 then core.sleep(0.0005) end
      until live == 0 or core.now() > deadline
      fluxalock.configure { host = false }
      assert.equal(1, calls)
      for i = 1, 10 do assert.same(got[1], got[i]) end
      assert.equal("value", got[1][1])
    end)
  end)

  for _, name in ipairs { "cqueues", "luv" } do
    describe("under host '" .. name .. "'", function()
      local new = H[name]

      before_each(function() fluxalock.configure { host = name } end)

      -- a coroutine of the loop that a spec may close: under cqueues a
      -- child resumed through cqueues.auxlib (the loop never resumes a
      -- dead coroutine itself), under luv a coroutine the host resumes
      local function closable(d, fn)
        local co = coroutine.create(fn)
        if d.name == "cqueues" then
          local auxlib = require "cqueues.auxlib"
          d.spawn(function() auxlib.resume(co) end)
        else
          assert(coroutine.resume(co))
        end
        return co
      end

      -- a coroutine of the loop whose once(key, 5, 3) call runs its fn for
      -- 'secs' (a sleep of the loop) and returns "value": st.started once fn
      -- runs, st.calls counts it; the call's results go to out[i]
      local function long_call(d, locker, key, secs, st, out, i)
        d.spawn(function()
          out[i] = call(locker.once, locker, key, 5, 3, function()
            st.calls = st.calls + 1
            st.started = true
            d.sleep(secs)
            return "value"
          end)
        end)
      end

      it("callers that come while one runs share its values: fn runs once", function()
        local d = new()
        local locker = fluxalock.locker()
        local calls, got, ran = 0, {}, nil
        local shared = { "the table" }
        for i = 1, 50 do
          d.spawn(function()
            got[i] = call(locker.once, locker, "once:shared", 5, 3, function(a)
              calls = calls + 1
              ran = a
              d.sleep(0.1)
              return shared, nil, a
            end, i)
          end)
        end
        d.run()
        assert.same({}, d.errors)
        assert.equal(1, calls)
        assert.equal(50, #got)
        for i = 1, 50 do
          assert.equal(3, got[i].n)
          assert.equal(shared, got[i][1]) -- the very same table
          assert.equal(ran, got[i][3]) -- the arguments of the call that ran
        end
        assert.equal("0", server:cli("EXISTS", "once:shared"))
        -- after it ended, a new call runs fn again
        d = new()
        d.spawn(function() locker:once("once:shared", 5, 3, function() calls = calls + 1 end) end)
        d.run()
        assert.equal(2, calls)
      end)

      it("fn raising: every caller raises the very same error value, the lock is released", function()
        local d = new()
        local locker = fluxalock.locker()
        local calls, got = 0, {}
        local e = setmetatable({}, { __tostring = function() return "the error" end })
        for i = 1, 20 do
          d.spawn(function()
            got[i] = call(locker.once, locker, "once:raises", 5, 3, function()
              calls = calls + 1
              d.sleep(0.05)
              error(e)
            end)
          end)
        end
        d.run()
        assert.same({}, d.errors)
        assert.equal(1, calls)
        for i = 1, 20 do assert.equal(e, got[i].raised) end
        assert.equal("0", server:cli("EXISTS", "once:raises"))
      end)

      it("a waiter that gives up gets 'not obtained' at its own deadline; the call runs on for the others", function()
        local d = new()
        local locker = fluxalock.locker()
        local st, long, short, took = { calls = 0, started = false }, {}, nil, nil
        long_call(d, locker, "once:giveup", 0.6, st, long, 1)
        d.spawn(function()
          while not st.started do d.sleep(0.005) end
          local t0 = core.now()
          short = call(locker.once, locker, "once:giveup", 5, 0.1, function() st.calls = st.calls + 1 end)
          took = core.now() - t0
        end)
        d.spawn(function()
          while not st.started do d.sleep(0.005) end
          long[2] = call(locker.once, locker, "once:giveup", 5, 3, function() st.calls = st.calls + 1 end)
        end)
        local now_only
        d.spawn(function()
          while not st.started do d.sleep(0.005) end
          -- wait 0: the key is busy, so at once (as obtain with wait 0)
          local t0 = core.now()
          now_only = call(locker.once, locker, "once:giveup", 5, 0, function() st.calls = st.calls + 1 end)
          now_only.took = core.now() - t0
        end)
        d.run()
        assert.same({}, d.errors)
        assert.equal(1, st.calls)
        assert.same({ n = 3, [2] = "not obtained", [3] = "not_obtained" }, short)
        assert.is_true(took >= 0.1 and took < 0.5, ("gave up after %.3f s"):format(took))
        assert.same({ n = 1, "value" }, long[1])
        assert.same({ n = 1, "value" }, long[2])
        assert.is_true(now_only.took < 0.1, ("wait 0 took %.3f s"):format(now_only.took))
        now_only.took = nil
        assert.same({ n = 3, [2] = "not obtained", [3] = "not_obtained" }, now_only)
      end)

      it("a waiter closed while it waits cancels nothing: the call ends and the others get its values", function()
        local d = new()
        local locker = fluxalock.locker()
        local st, got = { calls = 0, started = false }, {}
        long_call(d, locker, "once:wclosed", 0.2, st, got, 1)
        local waiter, joining = nil, false
        d.spawn(function()
          while not st.started do d.sleep(0.005) end
          waiter = closable(d, function()
            joining = true -- (no yield from here to its park in once)
            got.closed = call(locker.once, locker, "once:wclosed", 5, 3, function() st.calls = st.calls + 1 end)
          end)
          got[2] = call(locker.once, locker, "once:wclosed", 5, 3, function() st.calls = st.calls + 1 end)
        end)
        d.spawn(function()
          while not joining do d.sleep(0.005) end
          assert.equal("suspended", coroutine.status(waiter))
          assert(coroutine.close(waiter))
        end)
        d.run()
        assert.same({}, d.errors)
        assert.equal(1, st.calls)
        assert.is_nil(got.closed)
        assert.same({ n = 1, "value" }, got[1])
        assert.same({ n = 1, "value" }, got[2])
      end)

      it("the running coroutine closed mid-call: the lock is released and the waiters run the next call", function()
        local d = new()
        local locker = fluxalock.locker()
        local calls, got, inside, ended = 0, {}, false, 0
        local host, parked = require("fluxalock.host").resolve(name), {}
        local leader = closable(d, function()
          locker:once("once:closed", 30, 10, function()
            calls = calls + 1
            inside = true
            -- never ends: closed here (parked on the host, which lets a
            -- coroutine be closed in its park)
            host.park(parked, 20)
          end)
        end)
        local t0, joined = nil, 0
        for i = 1, 10 do
          d.spawn(function()
            while not inside do d.sleep(0.005) end
            joined = joined + 1 -- (no yield from here to its park in once)
            got[i] = call(locker.once, locker, "once:closed", 30, 10, function()
              calls = calls + 1
              d.sleep(0.05)
              return "second", server:cli("EXISTS", "once:closed")
            end)
            ended = math.max(ended, core.now())
          end)
        end
        d.spawn(function()
          while joined < 10 do d.sleep(0.005) end -- the waiters have joined the flight
          t0 = core.now()
          assert(coroutine.close(leader))
          -- (under cqueues, the coroutine that resumed it still waits on
          -- its park: woken, it finds it dead and ends)
          host.unpark(parked)
        end)
        d.run()
        local took = ended - t0
        assert.same({}, d.errors)
        assert.equal(2, calls)
        for i = 1, 10 do assert.same({ n = 2, "second", "1" }, got[i]) end
        -- the closed call's lock was released at once, not left to its 30 s ttl
        assert.is_true(took < 5, ("the waiters ended %.2f s after the close"):format(took))
        assert.equal("0", server:cli("EXISTS", "once:closed"))
      end)

      it("the running call not obtaining: every caller gets nil, 'not obtained', 'not_obtained'", function()
        local d = new()
        local locker = fluxalock.locker()
        local other = fluxalock.locker(server.url) -- another pool: no flight shared
        local holder
        local calls, got = 0, {}
        d.spawn(function() holder = assert(other:obtain("once:taken", 30)) end)
        for i = 1, 20 do
          d.spawn(function()
            while not holder do d.sleep(0.005) end
            got[i] = call(locker.once, locker, "once:taken", 5, 0.2, function() calls = calls + 1 end)
          end)
        end
        d.run()
        assert.same({}, d.errors)
        assert.equal(0, calls)
        for i = 1, 20 do assert.same({ n = 3, [2] = "not obtained", [3] = "not_obtained" }, got[i]) end
        d = new()
        d.spawn(function() assert.is_true(holder:release()) end)
        d.run()
      end)

      it("outside a coroutine of the loop, a call returns what obtain says there instead of raising or blocking", function()
        local d = new()
        local locker = fluxalock.locker()
        local calls, got, inside = 0, nil, false
        -- under luv a coroutine resumed here runs to its first wait at once;
        -- under cqueues the main thread never runs beside the loop, so
        -- there is no flight: the call is alone
        local leader = coroutine.create(function()
          got = call(locker.once, locker, "once:outside:" .. name, 5, 3, function()
            calls = calls + 1
            inside = true
            d.sleep(0.05)
            return "value"
          end)
        end)
        if name == "luv" then
          -- the loop runs until the flight is in fn (the lock held)
          assert(coroutine.resume(leader))
          local uv, deadline = require "luv", core.now() + 5
          while not inside and core.now() < deadline do uv.run("once") end
          assert.is_true(inside)
        end
        -- (wait 0: obtain's waiting path, when a coroutine here is trying
        -- the key, parks in Lua and raises outside a coroutine)
        local r = call(locker.once, locker, "once:outside:" .. name, 5, 0, function() calls = calls + 1 end)
        assert.is_nil(r.raised)
        assert.is_nil(r[1])
        assert.matches("^fluxalock: obtain .*host wait: cannot wait outside", r[2])
        if name == "luv" then
          d.run()
          assert.same({ n = 1, "value" }, got)
        end
        assert.same({}, d.errors)
        assert.equal(name == "luv" and 1 or 0, calls)
      end)

      it("fn calling once for its own key raises; waiters raise the same error", function()
        local d = new()
        local locker = fluxalock.locker()
        local got = {}
        for i = 1, 3 do
          d.spawn(function()
            got[i] = call(locker.once, locker, "once:reenter", 5, 3, function()
              d.sleep(0.02)
              return locker:once("once:reenter", 5, 3, function() return 1 end)
            end)
          end)
        end
        d.run()
        assert.same({}, d.errors)
        for i = 1, 3 do assert.matches("bad argument #1 to 'once'.*wait for itself", got[i].raised) end
        assert.equal(got[1].raised, got[3].raised)
      end)
    end)
  end
end)
