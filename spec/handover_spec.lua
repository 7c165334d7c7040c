-- Hand-over in one round trip (lua/fluxalock.lua handover, csrc/llock.c
-- hand_prepare, the "handover" script of csrc/keys.c): under a host, the
-- release of a plain lock whose key has a waiter in this process passes the
-- lock straight to that waiter in the release's own script.  The key is
-- never free in between, the waiter makes no request of its own, fences
-- go on increasing, and a waiter that is gone by the time the reply comes
-- leaves nothing held.  Real redis-servers, real luv and cqueues loops,
-- real processes for the contender.
local R = require "support.redis"
local H = require "support.hosts"
local core = require "fluxalock.core"

-- the scripts the server ran so far (EVALSHA and EVAL, but an EVALSHA it
-- answered NOSCRIPT: the same script then comes again as EVAL), its
-- PUBLISHes, and the counters as the server gave them (for a message)
local function script_calls(server)
  local info = server:cli("INFO", "commandstats")
  local function stat(name, what)
    local line = info:match("cmdstat_" .. name .. "(:[^\r\n]*)")
    return line and tonumber(line:match("[:,]" .. what .. "=(%d+)")) or 0
  end
  local ran = stat("evalsha", "calls") - stat("evalsha", "failed_calls") + stat("eval", "calls")
  return ran, stat("publish", "calls"), table.concat({ info:match("cmdstat_evalsha:[^\r\n]*") or "",
    info:match("cmdstat_eval:[^\r\n]*") or "" }, "; ")
end

-- sleep in the loop until fn() is true (at most 'limit' seconds)
local function until_loop(d, fn, limit, what)
  local deadline = core.now() + (limit or 10)
  while not fn() do
    if core.now() > deadline then error("timed out waiting for " .. what, 2) end
    d.sleep(0.002)
  end
end

-- a contender process: from the moment the key "<KEY>:phase" reads
-- "chain" until it reads "done", it tries the key without waiting and
-- reads the key and the phase together (one MGET): it prints how often it
-- obtained the lock, and how often it found the key free, in the chain
local CONTENDER = [[
local key = os.getenv("KEY")
local redis = core.pool { host = "127.0.0.1", port = tonumber(os.getenv("PORT")) }
assert(redis:call { "SET", key .. ":ready", "1" })
local won, free, looks = 0, 0, 0
local deadline = core.now() + 60
while core.now() < deadline do
  local r = redis:call { "MGET", key, key .. ":phase" }
  if r[2] == "done" then break end
  if r[2] == "chain" then
    looks = looks + 1
    redis:call { "INCR", key .. ":looks" } -- the chain's links wait for a look
    if r[1] == nil then free = free + 1 end
    local lock = locker:obtain(key, 5)
    if lock then
      if redis:call { "GET", key .. ":phase" } == "chain" then won = won + 1 end
      lock:release()
    end
  end
end
print(("won=%d free=%d looks=%d"):format(won, free, looks))
]]

for _, host in ipairs { "luv", "cqueues" } do
  describe("a release under " .. host .. " with a waiter in this process", function()
    -- slow backoff steps (the first pause 2.5-5 s): a waiter that gets the
    -- lock right after a release was handed it, or woken by it.  (With 1 s
    -- steps, a waiter's first retry, 0.5-1 s after it began to wait, can
    -- fall between the two counts of scripts on a loaded machine: seen once
    -- as 2 scripts where the hand-over is 1)
    local env = R.setup { host = host, pool = { retry_step = 5, retry_max = 5 } }

    after_each(function()
      env.fluxalock.configure { host = host } -- (as the setup left it)
    end)

    it("hands the lock over in one request: no wake-up message, a higher fence", function()
      local d, l, s = H[host](), env.locker, env.server
      local key = "ho:one:" .. host
      local a, b, ok, before, after, value, held, bok
      -- a to b, then (measured: the server knows the script by then) b to c
      d.spawn(function()
        local first = assert(l:obtain(key, 10))
        d.spawn(function() a = assert(l:obtain(key, 10, 5)) end)
        until_loop(d, function() return l:stats().waiting == 1 end, 10, "the first waiter")
        assert(first:release())
        until_loop(d, function() return a ~= nil end, 5, "the first hand-over")
        d.spawn(function() b = assert(l:obtain(key, 10, 5)) end)
        until_loop(d, function() return l:stats().waiting == 1 end, 10, "the waiter")
        before = { script_calls(s) }
        ok = a:release()
        until_loop(d, function() return b ~= nil end, 5, "the hand-over")
        after = { script_calls(s) }
        value, held = s:cli("GET", key), { a:held(), b:held() }
        bok = b:release()
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_true(ok)
      -- release and obtain: one script
      assert.equal(1, after[1] - before[1], ("before: %s\nafter: %s"):format(before[3], after[3]))
      assert.equal(0, after[2] - before[2]) -- nobody else was told it is free
      assert.equal(b:token(), value)
      assert.equal(a:fence() + 1, b:fence())
      assert.same({ false, true }, held)
      assert.is_true(bok)
      assert.equal("", s:cli("GET", key))
    end)

    it("keeps the key held along a chain: a contender process never gets it", function()
      local d, l, s = H[host](), env.locker, env.server
      local key = "ho:chain:" .. host
      s:cli("DEL", key .. ":phase", key .. ":ready", key .. ":looks")
      local proc = R.child(CONTENDER, { URL = s.url, PORT = s.port, KEY = key })
      R.until_true(function() return s:cli("EXISTS", key .. ":ready") == "1" end, 20, "the contender")
      local n, fences, done = 20, {}, 0
      d.spawn(function()
        local first = assert(l:obtain(key, 10))
        fences[1] = first:fence()
        s:cli("SET", key .. ":phase", "chain")
        for i = 2, n do
          d.spawn(function()
            local lock = assert(l:obtain(key, 10, 8))
            fences[#fences + 1] = lock:fence()
            -- the contender tries meanwhile: each link holds until it has
            -- looked once more (0.3 s at most), not for a guessed 3 ms (a
            -- loaded machine's contender once slept through the chain)
            local seen, t = tonumber(s:cli("GET", key .. ":looks")) or 0, core.now()
            repeat d.sleep(0.002) until (tonumber(s:cli("GET", key .. ":looks")) or 0) > seen or core.now() - t > 0.3
            if i == n then s:cli("SET", key .. ":phase", "done") end
            assert(lock:release())
            done = done + 1
          end)
        end
        until_loop(d, function() return l:stats().waiting == n - 1 end, 10, "the waiters")
        d.sleep(0.003)
        assert(first:release())
      end)
      d.run()
      assert.same({}, d.errors)
      assert.equal(n - 1, done)
      local out = proc:wait(30)
      local won, free, looks = out:match("won=(%d+) free=(%d+) looks=(%d+)")
      assert.is_truthy(won, out)
      assert.is_true(tonumber(looks) > 0, out) -- it did look during the chain
      assert.equal("0", won, out)
      assert.equal("0", free, out)
      -- in the order they were obtained
      for i = 2, n do assert.is_true(fences[i] > fences[i - 1]) end
    end)

    it("renews the lock it handed over when its obtain asked for renewal", function()
      local d, l, s = H[host](), env.locker, env.server
      local key = "ho:renew:" .. host
      local b, held_late, pttl, value, bok
      d.spawn(function()
        local a = assert(l:obtain(key, 10))
        d.spawn(function()
          b = assert(l:obtain(key, 0.5, 5, { renew = true }))
          d.sleep(1.2) -- more than twice its ttl
          held_late = b:held()
          pttl = tonumber(s:cli("PTTL", key))
          value = s:cli("GET", key)
          bok = b:release()
        end)
        until_loop(d, function() return l:stats().waiting == 1 end, 10, "the waiter")
        assert(a:release())
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_true(held_late)
      assert.is_true(pttl > 0, tostring(pttl))
      assert.equal(b:token(), value)
      assert.is_true(bok)
    end)

    it("leaves a key taken by a foreign holder alone and hands nothing over", function()
      local d, l, s = H[host](), env.locker, env.server
      local key = "ho:foreign:" .. host
      local ok, b, berr, fence0
      d.spawn(function()
        local a = assert(l:obtain(key, 10))
        d.spawn(function() b, berr = l:obtain(key, 10, 0.6) end)
        until_loop(d, function() return l:stats().waiting == 1 end, 10, "the waiter")
        s:cli("SET", key, "foreign-holder") -- as if it expired and another took it
        fence0 = s:cli("GET", "fluxalock:fence")
        ok = a:release()
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_false(ok)
      assert.is_nil(b)
      assert.equal("not obtained", berr)
      assert.equal("foreign-holder", s:cli("GET", key))
      assert.equal(fence0, s:cli("GET", "fluxalock:fence"))
      s:cli("DEL", key)
    end)

    it("hands nothing to a waiter that gave up: the key is free after the release", function()
      local d, l, s = H[host](), env.locker, env.server
      local key = "ho:gaveup:" .. host
      local ok, b, berr
      d.spawn(function()
        local a = assert(l:obtain(key, 10))
        d.spawn(function() b, berr = l:obtain(key, 10, 0.2) end)
        until_loop(d, function() return berr ~= nil end, 5, "the waiter to give up")
        ok = a:release()
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_true(ok)
      assert.is_nil(b)
      assert.equal("", s:cli("GET", key))
    end)
  end)
end

describe("a hand-over whose waiter is closed before it runs (luv)", function()
  local env = R.setup { host = "luv", pool = { retry_step = 1, retry_max = 1 } }

  it("gives the lock back at once: the next waiter gets it, or the key is free", function()
    local d, l, s = H.luv(), env.locker, env.server
    for _, next_waits in ipairs { false, true } do
      local key = "ho:closed:" .. tostring(next_waits)
      local bco, b, c, after
      d.spawn(function()
        local a = assert(l:obtain(key, 10))
        d.spawn(function()
          bco = coroutine.running()
          b = l:obtain(key, 10, 5)
        end)
        if next_waits then d.spawn(function() c = assert(l:obtain(key, 10, 5)) end) end
        until_loop(d, function() return l:stats().waiting == (next_waits and 2 or 1) end, 10, "the waiters")
        assert(a:release()) -- handed to b, which has not run yet
        assert(coroutine.close(bco))
        if next_waits then
          until_loop(d, function() return c ~= nil end, 5, "the next waiter")
          after = s:cli("GET", key)
          assert(c:release())
        else
          until_loop(d, function() return s:cli("GET", key) == "" end, 5, "the key to be free")
        end
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_nil(b)
      assert.equal(0, l:stats().waiting)
      if next_waits then assert.equal(c:token(), after) end
      assert.equal("", s:cli("GET", key))
    end
  end)
end)

describe("a release whose coroutine is closed while its hand-over is in flight (luv)", function()
  local env = R.setup { host = "luv", pool = { retry_step = 0.2, retry_max = 0.2 } }

  it("leaves no lock held by nobody: the waiter gets the key once the lost one is collected", function()
    local d, l, s = H.luv(), env.locker, env.server
    local key = "ho:abandoned"
    local b, returned
    d.spawn(function()
      -- a first hand-over, so that the server knows the script (an
      -- abandoned first use would leave the key to the releaser's token:
      -- its NOSCRIPT answer is never followed by the script itself)
      local a0, a = assert(l:obtain(key, 30)), nil
      d.spawn(function() a = assert(l:obtain(key, 30, 8)) end)
      until_loop(d, function() return l:stats().waiting == 1 end, 10, "the first waiter")
      assert(a0:release())
      until_loop(d, function() return a ~= nil end, 5, "the first hand-over")
      d.spawn(function() b = assert(l:obtain(key, 30, 8)) end)
      until_loop(d, function() return l:stats().waiting == 1 end, 10, "the waiter")
      local aco = coroutine.create(function()
        a:release()
        returned = true
      end)
      assert(coroutine.resume(aco)) -- sent; it waits for the reply
      assert.equal("suspended", coroutine.status(aco))
      assert(coroutine.close(aco))
      a = nil -- (its closed coroutine keeps nothing: the lost hand-over lock is garbage)
      collectgarbage()
      collectgarbage()
      until_loop(d, function() return b ~= nil end, 6, "the waiter to get the key")
      assert(b:release())
    end)
    d.run()
    assert.same({}, d.errors)
    assert.is_nil(returned)
    assert.equal("", s:cli("GET", key))
  end)
end)

-- A head waiter sleeps its backoff step on the wake-up subscription's
-- socket (csrc/wake.c, pool:subwait).  What else comes on that socket (the
-- confirmation of a SUBSCRIBE another key's waiter sent, of its own) ended
-- the step, and the waiter tried the key again for nothing: on a loaded
-- machine that try fell inside a hand-over and was counted as its second
-- script.  Only a release of its key, a hand-over or the step's end may
-- end the step.
for _, host in ipairs { "luv", "cqueues" } do
  describe("a head waiter's backoff step under " .. host, function()
    local env = R.setup { host = host, pool = { retry_step = 5, retry_max = 5 } }

    -- the wake-up channels the server has subscribers for
    local function channels(s)
      return #assert(s:call("PUBSUB", "CHANNELS"))
    end

    it("is not ended by the subscription's replies to another waiter's SUBSCRIBE", function()
      local d, l, s = H[host](), env.locker, env.server
      local k1, k2 = "ho:step1:" .. host, "ho:step2:" .. host
      local w, x, before, after
      d.spawn(function()
        local h1, h2 = assert(l:obtain(k1, 10)), assert(l:obtain(k2, 10))
        d.spawn(function() w = assert(l:obtain(k1, 10, 8)) end)
        until_loop(d, function() return l:stats().waiting == 1 and channels(s) == 1 end, 10, "the first waiter")
        -- (a try its own confirmation caused, without the fix, could only
        -- add to the count below: no wait for it here)
        before = { script_calls(s) }
        d.spawn(function() x = assert(l:obtain(k2, 10, 8)) end) -- one try, then it subscribes
        until_loop(d, function() return l:stats().waiting == 2 and channels(s) == 2 end, 10, "the second waiter")
        -- the confirmation is on the first waiter's socket: a wake-up it
        -- took for a release would send its try in this turn of the loop
        d.sleep(0.1)
        after = { script_calls(s) }
        assert(h1:release())
        assert(h2:release())
        until_loop(d, function() return w ~= nil and x ~= nil end, 5, "the hand-overs")
        assert(w:release())
        assert(x:release())
      end)
      d.run()
      assert.same({}, d.errors)
      -- the second waiter's first try, and nothing else
      assert.equal(1, after[1] - before[1], ("before: %s\nafter: %s"):format(before[3], after[3]))
      assert.equal("", s:cli("GET", k1))
      assert.equal("", s:cli("GET", k2))
    end)
  end)
end
