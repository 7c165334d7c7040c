-- Test support for the event-loop host specs: one real loop per host
-- (cqueues, luv) behind a small driver, and the scenarios the cqueues and
-- luv specs share.  Everything runs against a real redis-server.
local core = require "fluxalock.core"
local R = require "support.redis"

local H = {}

-- a driver: spawn(fn) starts fn in a coroutine of the loop, sleep(s) yields
-- to the loop for s seconds, run() runs the loop until nothing is left.
-- An error inside a spawned coroutine is collected in d.errors (with a
-- traceback) instead of escaping through the loop.
local function collect(d, fn)
  return function()
    local ok, err = xpcall(fn, debug.traceback)
    if not ok then d.errors[#d.errors + 1] = err end
  end
end
H.collect = collect -- spec/support/scale.lua's drivers too

function H.cqueues()
  local cqueues = require "cqueues"
  local cq = cqueues.new()
  local d = { name = "cqueues", errors = {}, sleep = cqueues.sleep }
  function d.spawn(fn) cq:wrap(collect(d, fn)) end
  function d.run() assert(cq:loop()) end
  return d
end

function H.luv()
  local uv = require "luv"
  local d = { name = "luv", errors = {} }
  local function resume(co)
    local ok, err = coroutine.resume(co)
    if not ok then d.errors[#d.errors + 1] = err end
  end
  function d.spawn(fn) resume(coroutine.create(collect(d, fn))) end
  function d.sleep(s)
    local co = coroutine.running()
    local t = uv.new_timer()
    t:start(math.max(1, math.floor(s * 1000)), 0, function()
      t:close()
      resume(co)
    end)
    coroutine.yield()
  end
  function d.run() uv.run() end
  return d
end

-- a core pool for the specs' own bookkeeping commands (holder counters),
-- waiting through the same host so it never blocks the loop either
local function counter_pool(server, d)
  local p = core.pool { host = "127.0.0.1", port = server.port, timeout = 2 }
  p:sethost(require("fluxalock.host").resolve(d.name))
  return p
end
H.counter_pool = counter_pool

-- The heartbeat: a coroutine that sleeps 'beat' seconds at a time and
-- records the longest gap between two of its wake-ups while 'busy()' is
-- true.  A lock call that blocked the thread would show up here as a gap of
-- its whole blocking time.
function H.heartbeat(d, beat, busy)
  local hb = { max = 0, beats = 0 }
  d.spawn(function()
    local last = core.now()
    while busy() do
      d.sleep(beat)
      local t = core.now()
      if t - last > hb.max then hb.max = t - last end
      hb.beats = hb.beats + 1
      last = t
    end
  end)
  return hb
end

-- H.cqueues_rounds(fluxalock, key, get_locker): the module's host becomes
-- cqueues with its wait calls counted; 3 coroutines take key 10 times each,
-- every lock held across a sleep of the loop (the others run meanwhile).
-- get_locker() (after the host is set; default fluxalock.locker) gives the
-- locker.  The host is unset again.  -> { ok, err (of the loop), got,
-- overlaps, waits, locker }
function H.cqueues_rounds(fluxalock, key, get_locker)
  local cqueues = require "cqueues"
  local cq_host = require("fluxalock.host").resolve("cqueues")
  local r = { got = 0, overlaps = 0, waits = 0 }
  fluxalock.configure { host = { wait = function(...) r.waits = r.waits + 1 return cq_host.wait(...) end,
                                 park = cq_host.park, unpark = cq_host.unpark } }
  r.locker = (get_locker or fluxalock.locker)()
  local cq, inside = cqueues.new(), 0
  for _ = 1, 3 do
    cq:wrap(function()
      for _ = 1, 10 do
        local lock <close>, err = r.locker:obtain(key, 2, 1)
        assert(lock, err)
        inside = inside + 1
        if inside > 1 then r.overlaps = r.overlaps + 1 end
        cqueues.sleep(0.001) -- the others run meanwhile
        inside = inside - 1
        r.got = r.got + 1
      end
    end)
  end
  r.ok, r.err = cq:loop()
  fluxalock.configure { host = false }
  return r
end

-- H.luv_held(server, key, pool): a module for server (pool: its options;
-- default a quick backoff), a lock on key taken before the host is set, and
-- the locker under host luv -> fluxalock, the holder's lock, the locker
function H.luv_held(server, key, pool)
  local fl = R.fluxalock(server, pool or { retry_step = 0.01, retry_max = 0.05 })
  local holder = assert(fl.locker():obtain(key, 30))
  fl.configure { host = "luv" }
  return fl, holder, fl.locker()
end

-- H.stampede(d, locker, n, key_of, ttl, wait, during): n coroutines under
-- host d, coroutine i obtains key_of(i) (ttl, wait), holds it across a
-- 1 ms sleep of the loop (calling during(lock) if given), and releases it.
-- Returns { done = n released, failed = { error messages } }, counted as
-- they happen (a heartbeat may watch them); d.run() is the caller's.
function H.stampede(d, locker, n, key_of, ttl, wait, during)
  local st = { done = 0, failed = {} }
  for i = 1, n do
    d.spawn(function()
      local lock, err = locker:obtain(key_of(i), ttl, wait)
      if not lock then
        st.failed[#st.failed + 1] = tostring(err)
        return
      end
      d.sleep(0.001) -- held across a yield to the loop
      if during then during(lock) end
      assert(lock:release())
      st.done = st.done + 1
    end)
  end
  return st
end

-- n coroutines contend for k keys, each holding its lock across a timer
-- sleep of 'hold' seconds.  Overlaps are counted twice: in Lua (this
-- process) and with INCR/DECR in Redis (every process, also a plain one).
function H.contention(d, fluxalock, server, opts)
  local n, k, hold = opts.n or 200, opts.k or 10, opts.hold or 0.005
  local locker = fluxalock.locker()
  local counts = counter_pool(server, d)
  local st = { done = 0, failed = {}, overlaps = 0, redis_overlaps = 0 }
  local holders = {}
  local started = core.now()
  local hb = H.heartbeat(d, opts.beat or 0.005, function() return st.done + #st.failed < n end)
  for i = 1, n do
    d.spawn(function()
      local key = (opts.prefix or "job:") .. (i % k)
      local lock <close>, err = locker:obtain(key, 10, 8)
      if not lock then
        st.failed[#st.failed + 1] = key .. ": " .. tostring(err)
        return
      end
      holders[key] = (holders[key] or 0) + 1
      if holders[key] > 1 then st.overlaps = st.overlaps + 1 end
      local inside = assert(counts:call { "INCR", "holders:" .. key })
      if inside ~= 1 then st.redis_overlaps = st.redis_overlaps + 1 end
      d.sleep(hold) -- held across a yield to the loop
      assert(counts:call { "DECR", "holders:" .. key })
      holders[key] = holders[key] - 1
      st.done = st.done + 1
      -- the <close> variable releases here, yielding through the host
    end)
  end
  d.run()
  st.errors = d.errors
  st.elapsed = core.now() - started
  st.heartbeat = hb
  st.connections = select(2, locker._pool:connections())
  return st
end

-- a plain blocking process contending for the same keys until the key
-- 'stop' exists (or 'rounds' is reached); prints "plain done=N overlaps=N"
function H.spawn_plain(server, opts)
  local code = ([[
    local core = require "fluxalock.core"
    local fluxalock = require "fluxalock"
    fluxalock.configure { pools = { default = %q } }
    local locker = fluxalock.locker()
    local counts = core.pool { host = "127.0.0.1", port = %d }
    local done, overlaps, failed = 0, 0, 0
    counts:call { "SET", "plain:started", "1" }
    for i = 1, %d do
      if counts:call { "EXISTS", "stop" } == 1 then break end
      local key = %q .. (i %% %d)
      local lock, err = locker:obtain(key, 10, 8)
      if lock then
        if counts:call { "INCR", "holders:" .. key } ~= 1 then overlaps = overlaps + 1 end
        core.sleep(%g)
        counts:call { "DECR", "holders:" .. key }
        lock:release()
        done = done + 1
      else
        failed = failed + 1
        io.stderr:write(tostring(err), "\n")
      end
    end
    print(("plain done=%%d overlaps=%%d failed=%%d"):format(done, overlaps, failed))
  ]]):format(server.url, server.port, opts.rounds or 400, opts.prefix or "job:", opts.k or 10, opts.hold or 0.005)
  local proc = R.spawn(code)
  R.until_true(function() return server:cli("EXISTS", "plain:started") == "1" end, 10, "plain process start")
  return proc
end

function H.parse_plain(out)
  local done, overlaps, failed = out:match("plain done=(%d+) overlaps=(%d+) failed=(%d+)")
  return tonumber(done), tonumber(overlaps), tonumber(failed)
end

-- Redis dies (SIGKILL) while coroutines wait for a held lock, and comes back
-- (same port, empty).  Every obtain must end by its deadline, with a lock
-- or nil, "fluxalock: ..."; after the restart new obtains succeed.
function H.outage(d, fluxalock, server, opts)
  local n, wait = opts.n or 20, opts.wait or 2
  local locker = fluxalock.locker()
  local res = { ends = {}, late = {}, after = nil }
  local phase = "waiting"
  d.spawn(function()
    local holder = assert(locker:obtain("outage", 30))
    for i = 1, n do
      d.spawn(function()
        local t0 = core.now()
        local lock, err = locker:obtain("outage", 30, wait)
        local took = core.now() - t0
        res.ends[#res.ends + 1] = { lock = lock, err = err, took = took, i = i }
        -- its deadline plus one command timeout (a request started just
        -- before the deadline may run its full timeout), plus slack
        if took > wait + 1 + 0.5 then res.late[#res.late + 1] = took end
      end)
    end
    -- the real signal: every waiter is queued in the locker (a waiting
    -- obtain holds no connection under a host: the server cannot see it)
    while locker:stats().waiting < n do d.sleep(0.01) end
    server:signal("KILL")
    phase = "down"
    -- a new obtain while the server is down fails at once, no hang
    local t0 = core.now()
    local lock, err = locker:obtain("outage:down", 5)
    res.down = { lock = lock, err = err, took = core.now() - t0 }
    holder:release() -- fails (server gone): must not raise
    while #res.ends < n do d.sleep(0.01) end
  end)
  d.run()
  assert(phase == "down")
  R.until_true(function() return not R.alive(server.pid) end, 10, "redis-server death")
  server.pid = nil
  server:restart()
  -- after the restart: the same pool reconnects, from inside the loop
  d.spawn(function()
    local lock, err = locker:obtain("outage", 30, 1)
    res.after = { lock = lock, err = err }
    if lock then res.after.released = lock:release() end
  end)
  d.run()
  res.errors = d.errors
  return res
end

-- the heartbeat sleeps 5 ms; a gap of a second means the loop was blocked:
-- a blocking obtain stalls it for its whole wait (8 s here: the holder it
-- waits for cannot run to release).  A loaded 2-core machine, or a
-- sanitizer, does stall a process for a few hundred ms (seen: 291 ms under
-- ASan beside other jobs), which is not what this measures
local MAX_GAP = 1.0

-- fn() run in a plain script (host "plain"), or in a coroutine of a real
-- luv or cqueues loop, fluxalock configured with that host meanwhile (the
-- lockers are made inside fn) -> fn's results.  Raises when the loop
-- failed, a coroutine of it raised, or fn did not finish
function H.under(host, fn)
  if host == "plain" then return fn() end
  local fluxalock = require "fluxalock"
  fluxalock.configure { host = host }
  local d = H[host]()
  local res
  d.spawn(function() res = table.pack(fn()) end)
  local ok, err = pcall(d.run)
  fluxalock.configure { host = false }
  if not ok then error(err, 2) end
  if #d.errors > 0 then error("a coroutine of the loop failed: " .. tostring(d.errors[1]), 2) end
  if not res then error("the coroutine did not finish", 2) end
  return table.unpack(res, 1, res.n)
end

-- the shared specs of one host; env: the calling spec file's _ENV (busted
-- gives describe/it/assert to spec files only)
function H.spec(name, outside, env)
  local describe, it, assert = env.describe, env.it, env.assert
  local lazy_setup, lazy_teardown = env.lazy_setup, env.lazy_teardown
  local new = H[name]
  describe("host '" .. name .. "'", function()
    local server, fluxalock

    lazy_setup(function()
      server = R.start()
      fluxalock = R.fluxalock(server)
      fluxalock.configure { host = name }
    end)

    lazy_teardown(function()
      if server then server:stop() end
    end)

    it("heartbeat sees a loop that is really blocked (the measure can fail)", function()
      local d = new()
      local blocked = false
      local hb = H.heartbeat(d, 0.005, function() return not blocked end)
      d.spawn(function()
        d.sleep(0.02)
        require("fluxalock.core").sleep(0.15) -- blocks the thread, as a blocking call would
        blocked = true
      end)
      d.run()
      assert.is_true(hb.max >= 0.15, "max gap " .. hb.max)
    end)

    it("200 coroutines contend for 10 keys, locks held across yields: no overlap, none blocks the loop", function()
      local st = H.contention(new(), fluxalock, server, { n = 200, k = 10, hold = 0.005 })
      assert.same({}, st.errors)
      assert.same({}, st.failed)
      assert.equal(200, st.done)
      assert.equal(0, st.overlaps)
      assert.equal(0, st.redis_overlaps)
      assert.is_true(st.heartbeat.beats > 5, "heartbeat ran " .. st.heartbeat.beats .. " times")
      assert.is_true(st.heartbeat.max < MAX_GAP, ("heartbeat delayed %.1f ms"):format(st.heartbeat.max * 1000))
      for i = 0, 9 do assert.equal("0", server:cli("EXISTS", "job:" .. i)) end
    end)

    it("interoperates with a plain blocking process on the same keys", function()
      server:cli("DEL", "stop", "plain:started")
      local plain = H.spawn_plain(server, { prefix = "mixed:", k = 10, hold = 0.003 })
      local st = H.contention(new(), fluxalock, server, { n = 200, k = 10, hold = 0.005, prefix = "mixed:" })
      server:cli("SET", "stop", "1")
      local out = plain:wait(30)
      local done, overlaps, failed = H.parse_plain(out)
      assert.same({}, st.errors)
      assert.same({}, st.failed)
      assert.equal(200, st.done)
      assert.equal(0, st.redis_overlaps)
      assert.truthy(done, out)
      assert.is_true(done > 0, out)
      assert.equal(0, overlaps)
      assert.equal(0, failed)
      assert.is_true(st.heartbeat.max < MAX_GAP, ("heartbeat delayed %.1f ms"):format(st.heartbeat.max * 1000))
    end)

    it("outside a coroutine of the loop, a call fails with a clear message instead of blocking", function()
      local lock, err = fluxalock.locker():obtain("outside", 5)
      assert.is_nil(lock)
      assert.equal("host wait: " .. outside, err:match("^fluxalock: obtain 127%.0%.0%.1:%d+: (.*)$"))
    end)

    -- an obtain the server runs after its caller is gone: the lock it
    -- took is released at once, never left to its ttl (30 s here).  The
    -- next obtain of the key goes on the same connection, behind it
    it("an obtain whose coroutine is closed mid-request, or made outside a coroutine, leaves the key free", function()
      local d, locker = new(), fluxalock.locker()
      -- in the loop (after 'before', in a coroutine of it): key obtained at
      -- once (wait 0) and released
      local function free_now(key, before)
        local res
        d.spawn(function()
          if before then before() end
          local lock, err = locker:obtain(key, 30, 0)
          res = { lock = lock, err = err, released = lock and lock:release() }
        end)
        d.run()
        assert.same({}, d.errors)
        assert.truthy(res.lock, res.err)
        assert.is_true(res.released)
      end
      free_now("orphan", function()
        local co = coroutine.create(function() return locker:obtain("orphan", 30) end)
        assert(coroutine.resume(co)) -- sent; now in the host's wait
        assert.equal("suspended", coroutine.status(co))
        assert(coroutine.close(co))
      end)
      -- no coroutine: fails after sending (the connection is open)
      local lock, err = locker:obtain("orphan:outside", 30)
      assert.is_nil(lock)
      assert.matches("host wait: ", err)
      free_now("orphan:outside")
      assert.equal("-2", server:cli("PTTL", "orphan"))
      assert.equal("-2", server:cli("PTTL", "orphan:outside"))
    end)

    -- Redis lost its scripts (SCRIPT FLUSH, a restart): a release answers
    -- NOSCRIPT and is sent again as EVAL.  One whose coroutine is closed
    -- before that answer is read still frees its key; the release behind
    -- it on the same connection is answered after it
    it("a release whose coroutine is closed before its NOSCRIPT answer still frees the key", function()
      local d, locker = new(), fluxalock.locker()
      local res = {}
      d.spawn(function()
        local a = assert(locker:obtain("noscript:a", 30))
        local b = assert(locker:obtain("noscript:b", 30))
        assert.equal("OK", server:cli("SCRIPT", "FLUSH"))
        local co = coroutine.create(function() return a:release() end)
        assert(coroutine.resume(co)) -- sent; now in the host's wait
        assert.equal("suspended", coroutine.status(co))
        assert(coroutine.close(co))
        res.b = b:release()
      end)
      d.run()
      assert.same({}, d.errors)
      assert.is_true(res.b)
      assert.equal("-2", server:cli("PTTL", "noscript:b"))
      assert.equal("-2", server:cli("PTTL", "noscript:a"))
    end)

    it("redis killed and restarted while coroutines wait: each wait ends on time, then reconnects", function()
      local s2 = R.start()
      local fl2 = R.fluxalock(s2, { timeout = 0.5, connect_timeout = 0.5 })
      fl2.configure { host = name }
      local ok, res = pcall(H.outage, new(), fl2, s2, { n = 20, wait = 2 })
      s2:stop()
      R.fluxalock(server).configure { host = name } -- the same module: back to the main server
      assert(ok, res)
      assert.same({}, res.errors)
      assert.equal(20, #res.ends)
      for _, e in ipairs(res.ends) do
        if not e.lock then assert.matches("^fluxalock: ", e.err) end
      end
      assert.same({}, res.late)
      assert.is_nil(res.down.lock)
      assert.matches("^fluxalock: ", res.down.err)
      assert.truthy(res.after.lock, res.after.err)
      assert.is_true(res.after.released)
    end)
  end)
end

return H
