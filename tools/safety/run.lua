-- The fault schedule: worker processes (tools/safety/worker.lua) loop
-- obtain, read, write with the fence, release on one key, while a seeded
-- scheduler injects faults; tools/safety/check.lua then reads the history.
--
--   lua5.4 tools/safety/run.lua [--seed N] [--seconds S] [--workers N]
--                               [--history FILE] [--legs a,b,...]
--   (from the checkout, LUA_PATH="lua/?.lua;spec/?.lua;tools/?.lua;;"
--    LUA_CPATH="./?.so;;"; make safety does that)
--
-- It prints the checker's table (markdown) and exits 1 if the history shows
-- a stale write the fenced store took, a lost update, or a lock acknowledged
-- by a replica that a failover lost.  The legs, each on servers of its own
-- (real redis-servers on loopback ports, stopped by their PIDs):
--   fenced             one Redis (persistent: appendonly, fsync always), one
--                      proxy per worker; faults: a worker stopped (SIGSTOP)
--                      past its ttl, Redis SIGKILLed and restarted, a
--                      worker's connections cut, a worker's traffic stalled
--                      or slowed
--   unfenced           the same, the store taking every write (the control)
--   failover           master + replica + 3 sentinels; faults: a failover
--                      while the replica lags (it is stopped, the master
--                      killed, the replica resumed and promoted), a worker
--                      stopped; no replicas option
--   failover-replicas  the same with the pool's replicas = 1 and the
--                      servers' min-replicas-to-write 1
--   luv                as fenced, the workers coroutines of 2 luv processes
-- Odd workers renew their locks, even ones do not.  The seed fixes the
-- schedule: the gaps between faults, their kinds, lengths and targets (a
-- stop's target is whichever worker holds the lock then).
package.path = "examples/?.lua;" .. package.path -- fenced_store
local R = require "support.redis"
local T = require "support.topology"
local P = require "support.proxy"
local check = require "safety.check"

local M = {}

M.TTL = 1

-- a seeded xorshift64*: the schedule's own numbers (the support modules
-- draw ports from math.random)
local function rng_new(seed)
  local s = seed * 0x9E3779B97F4A7C15 + 1
  return function()
    s = s ~ (s << 13)
    s = s ~ (s >> 7)
    s = s ~ (s << 17)
    return ((s >> 11) & 0x1FFFFFFFFFFFFF) / 0x20000000000000
  end
end
M.rng_new = rng_new

M.LEGS = {
  { name = "fenced", store = "fenced", faults = { "stop", "kill", "cut", "delay" }, share = 0.25 },
  { name = "unfenced", store = "force", faults = { "stop", "kill", "cut", "delay" }, share = 0.15 },
  { name = "failover", store = "fenced", sentinel = true, replicas = 0, faults = { "failover", "stop" }, share = 0.2 },
  { name = "failover-replicas", store = "fenced", sentinel = true, replicas = 1,
    faults = { "failover", "stop" }, share = 0.2 },
  { name = "luv", store = "fenced", host = "luv", faults = { "stop", "kill", "cut", "delay" }, share = 0.2 },
}

local function role(s) return (s:cli("ROLE"):match("^(%a+)")) end

-- ---- the servers of a leg ---------------------------------------------------

local function single(ctx)
  ctx.lock = R.start { persist = true }
  ctx.servers[#ctx.servers + 1] = ctx.lock
end

local function repl_args(replicas, of)
  local a = { "--repl-diskless-sync-delay", "0", "--min-replicas-to-write", tostring(replicas),
              "--min-replicas-max-lag", "2" }
  if of then a[#a + 1] = "--replicaof" a[#a + 1] = "127.0.0.1" a[#a + 1] = tostring(of.port) end
  return a
end

local function in_sync(replica)
  R.until_true(function()
    return replica:cli("INFO", "replication"):find("master_link_status:up", 1, true)
  end, 20, "replica in sync")
end

-- every sentinel names m as the master, knows r, and no failover is under way
local function settled(ctx, m, r)
  R.until_true(function()
    for _, s in ipairs(ctx.sentinels) do
      if not s:cli("SENTINEL", "get-master-addr-by-name", ctx.name):find(tostring(m.port), 1, true)
        or s:cli("SENTINEL", "master", ctx.name):find("failover_in_progress", 1, true)
        or not s:cli("SENTINEL", "replicas", ctx.name):find(tostring(r.port), 1, true) then
        return false
      end
    end
    return true
  end, 30, "sentinels to settle")
end

local function sentinel(ctx, leg)
  ctx.name = "safety" .. ctx.index
  ctx.master = R.start { args = repl_args(leg.replicas) }
  ctx.replica = R.start { args = repl_args(leg.replicas, ctx.master) }
  ctx.servers[#ctx.servers + 1] = ctx.master
  ctx.servers[#ctx.servers + 1] = ctx.replica
  in_sync(ctx.replica)
  ctx.sentinels = T.sentinels(ctx.master, { ctx.replica }, 3, ctx.name)
  -- (300 ms, the support's choice for quick specs, makes sentinels on a
  -- busy machine take a slow reply for a dead master and fail over again)
  for _, s in ipairs(ctx.sentinels) do s:cli("SENTINEL", "SET", ctx.name, "down-after-milliseconds", "1000") end
  ctx.addrs = {}
  for i, s in ipairs(ctx.sentinels) do ctx.addrs[i] = s.addr end
  settled(ctx, ctx.master, ctx.replica)
  -- the scheduler's own lockers: one takes a lock just before a failover,
  -- the other (its own connections) tries to take it after
  local fl = require "fluxalock"
  local pool = { sentinels = ctx.addrs, master = ctx.name, timeout = 0.5, connect_timeout = 0.5 }
  if leg.replicas == 1 then pool.replicas, pool.replica_timeout = 1, 0.2 end
  local other = { sentinels = ctx.addrs, master = ctx.name, timeout = 0.5, connect_timeout = 0.5 }
  fl.configure { pools = { ["probe" .. ctx.index] = pool, ["other" .. ctx.index] = other } }
  ctx.probe = fl.locker("probe" .. ctx.index)
  ctx.other = fl.locker("other" .. ctx.index)
end

-- ---- the faults --------------------------------------------------------------

local FAULT = {}

-- the worker holding the lock now (waited for, up to 2 s), else one drawn
-- (always drawn: the schedule's later numbers must not depend on this)
local function holder(ctx, rng)
  local any = math.floor(rng() * ctx.nworkers) + 1
  local w
  pcall(R.until_true, function()
    w = tonumber(ctx.store:call("GET", "safety:holder"))
    return w ~= nil
  end, 2, "a holder")
  w = w or any
  return ctx.proc_of[w], w
end

function FAULT.stop(ctx, rng)
  local pause = M.TTL * (1.5 + rng()) -- longer than the ttl
  local proc, w = holder(ctx, rng)
  proc:signal("STOP")
  R.sleep(pause)
  proc:signal("CONT")
  return ("w=%d dur=%.3f"):format(w, pause)
end

function FAULT.kill(ctx, rng)
  local down = 0.1 + rng() * 0.4
  ctx.lock:kill()
  R.sleep(down)
  ctx.lock:restart()
  return ("dur=%.3f"):format(down)
end

local function proxy(ctx, rng)
  local i = math.floor(rng() * #ctx.proxies) + 1
  return ctx.proxies[i], i
end

function FAULT.cut(ctx, rng)
  local px, i = proxy(ctx, rng)
  px:cut()
  return ("proc=%d"):format(i)
end

function FAULT.delay(ctx, rng)
  local px, i = proxy(ctx, rng)
  local stall, dur = rng() < 0.5, 0.5 + rng() * 1.5
  if stall then px:mode("stall") else px:mode("slow", 200) end
  R.sleep(dur)
  px:mode("pass")
  return ("proc=%d mode=%s dur=%.3f"):format(i, stall and "stall" or "slow", dur)
end

-- the replica falls behind (stopped, its link cut by the master), a lock is
-- taken, the master dies, the replica is resumed and promoted: was the lock
-- there?
function FAULT.failover(ctx, rng)
  local lag = rng() * 0.1
  local m, r = ctx.master, ctx.replica
  ctx.nprobe = (ctx.nprobe or 0) + 1
  -- one lock taken while the replica keeps up, one while it is behind
  local keys = { "probe:" .. ctx.nprobe .. ":before", "probe:" .. ctx.nprobe .. ":behind" }
  local probes = { (ctx.probe:obtain(keys[1], 30)) }
  r:pause()
  m:cli("CLIENT", "KILL", "TYPE", "replica") -- nothing more reaches it
  probes[2] = ctx.probe:obtain(keys[2], 30)
  R.sleep(lag) -- the workers go on with the master meanwhile
  m:kill()
  r:resume()
  R.until_true(function() return role(r) == "master" end, 30, "the replica's promotion")
  -- the old master comes back as the new one's replica (with
  -- min-replicas-to-write 1 the new master takes no write before)
  m.opts.args = repl_args(ctx.replicas, r)
  m:restart()
  in_sync(m)
  for i = 1, 2 do
    local lost = 0
    if probes[i] then
      local taken, err
      local ok = pcall(R.until_true, function()
        local l, e = ctx.other:obtain(keys[i], 30)
        taken, err = l, e
        return l ~= nil or e == "not obtained"
      end, 20)
      if not ok then error("no answer of the new master in 20 s: " .. tostring(err), 0) end
      if taken then lost = 1 taken:release() end
    end
    ctx.log(("op=probe leg=%s replicas=%d acked=%d lost=%d"):format(ctx.leg, ctx.replicas, probes[i] and 1 or 0, lost))
  end
  settled(ctx, r, m)
  ctx.master, ctx.replica = r, m
  for i = 1, 2 do if probes[i] then probes[i]:release() end end
  ctx.last_failover = R.now()
  return ("lag=%.3f"):format(lag)
end

-- ---- a leg ----------------------------------------------------------------------

local function spawn(ctx, leg, first, count)
  local env = {
    ROOT = ctx.root, LEG = leg.name, FIRST = first, COUNT = count, HOST = leg.host or "proc",
    STORE_PORT = ctx.store_server.port, RECORD = "record:" .. leg.name, KEY = "job:" .. leg.name,
    TTL = M.TTL, STORE = leg.store, HISTORY = ctx.history, STOP = ctx.stop_file, SEED = ctx.seed,
    REPLICAS = leg.replicas or 0,
  }
  if leg.sentinel then
    env.SENTINELS, env.MASTER = table.concat(ctx.addrs, ","), ctx.name
  else
    local px = P.start(ctx.lock.port, "pass")
    ctx.proxies[#ctx.proxies + 1] = px
    env.URL = px.url
  end
  local proc = R.spawn(("dofile(%q)"):format(ctx.root .. "/tools/safety/worker.lua"), env)
  ctx.procs[#ctx.procs + 1] = proc
  for w = first, first + count - 1 do ctx.proc_of[w] = proc end
end

local function run_leg(o, leg, index, log)
  local ctx = { servers = {}, procs = {}, proxies = {}, proc_of = {}, index = index, leg = leg.name,
                replicas = leg.replicas or 0, root = o.root, history = o.history, seed = o.seed, log = log }
  ctx.stop_file = os.tmpname()
  os.remove(ctx.stop_file)
  local function cleanup()
    local f = io.open(ctx.stop_file, "w")
    if f then f:close() end
    for _, p in ipairs(ctx.procs) do
      p:signal("CONT")
      if not pcall(p.wait, p, 15) then p:signal("KILL") end
    end
    for _, px in ipairs(ctx.proxies) do px:stop() end
    for _, s in ipairs(ctx.sentinels or {}) do s:stop() end
    for _, s in ipairs(ctx.servers) do if s.pid then s:stop() end end
    if ctx.store then ctx.store:close() end
    if ctx.store_server then ctx.store_server:stop() end
    os.remove(ctx.stop_file)
  end
  local ok, err = pcall(function()
    ctx.store_server = R.start()
    ctx.store = assert(require("fenced_store").connect("127.0.0.1", ctx.store_server.port, "scheduler"))
    if leg.sentinel then sentinel(ctx, leg) else single(ctx) end
    local n = o.workers
    ctx.nworkers = n
    if leg.host == "luv" then
      local half = n // 2
      spawn(ctx, leg, 1, half)
      spawn(ctx, leg, half + 1, n - half)
    else
      for w = 1, n do spawn(ctx, leg, w, 1) end
    end
    local seconds = math.max(o.seconds * leg.share, 1)
    log(("op=leg leg=%s store=%s host=%s workers=%d replicas=%d seconds=%.1f"):format(
      leg.name, leg.store, leg.host or "proc", n, leg.replicas or 0, seconds))
    -- the schedule: its numbers drawn from the seed and the leg alone
    local rng = rng_new(o.seed * 31 + index)
    local kinds, pending = {}, {}
    for i, k in ipairs(leg.faults) do kinds[i] = k end
    for i = #kinds, 2, -1 do
      local j = math.floor(rng() * i) + 1
      kinds[i], kinds[j] = kinds[j], kinds[i]
    end
    for _, k in ipairs(kinds) do pending[#pending + 1] = k end
    local t0 = R.now()
    local deadline = t0 + seconds
    while R.now() < deadline or #pending > 0 do
      local gap = 0.3 + rng() * 1.2
      local kind = table.remove(pending, 1) or leg.faults[math.floor(rng() * #leg.faults) + 1]
      local frng = rng_new(math.floor(rng() * 2 ^ 40))
      if kind == "failover" and ctx.last_failover then
        -- a sentinel starts no new failover of a master name within twice
        -- its failover-timeout (3 s) of the last one
        gap = math.max(gap, ctx.last_failover + 6.5 - R.now())
      end
      R.sleep(gap)
      local at = R.now() - t0
      local what = FAULT[kind](ctx, frng)
      log(("op=fault leg=%s kind=%s at=%.3f %s"):format(leg.name, kind, at, what))
    end
    R.sleep(M.TTL) -- the workers go on for a ttl after the last fault
    log(("op=end leg=%s seconds=%.1f"):format(leg.name, R.now() - t0))
  end)
  cleanup()
  if not ok then error(err, 0) end
end

-- M.run{ seed, seconds, workers, history, legs = {names} or nil, progress = fn }
-- -> report (check.run's legs), failures, history path
function M.run(o)
  o.root = o.root or R.sh("pwd"):gsub("%s+$", "")
  o.history = o.history or os.tmpname()
  -- a fresh history, appended to (O_APPEND) by the scheduler and the workers
  assert(io.open(o.history, "w")):close()
  local h = assert(io.open(o.history, "a"))
  local function log(line)
    h:write(line, "\n")
    h:flush()
    if o.progress then o.progress(line) end
  end
  local want
  if o.legs then
    want = {}
    for _, n in ipairs(o.legs) do want[n] = true end
  end
  for i, leg in ipairs(M.LEGS) do
    if not want or want[leg.name] then run_leg(o, leg, i, log) end
  end
  h:close()
  local f = assert(io.open(o.history))
  local legs, failures = check.run(check.parse(f:read("a")))
  f:close()
  return legs, failures, o.history
end

if ... ~= "safety.run" then
  local o = { seed = 1, seconds = 600, workers = 4 }
  local i = 1
  while arg[i] do
    local a, v = arg[i], arg[i + 1]
    if a == "--seed" then o.seed = assert(math.tointeger(tonumber(v)), "--seed N")
    elseif a == "--seconds" then o.seconds = assert(tonumber(v), "--seconds S")
    elseif a == "--workers" then o.workers = assert(math.tointeger(tonumber(v)), "--workers N")
    elseif a == "--history" then o.history = v
    elseif a == "--legs" then
      o.legs = {}
      for n in v:gmatch("[^,]+") do o.legs[#o.legs + 1] = n end
    else error("unknown option " .. a) end
    i = i + 2
  end
  o.progress = function(line)
    if not line:find("^op=write") then io.stderr:write(line, "\n") end
  end
  local t0 = R.now()
  local legs, failures, history = M.run(o)
  io.write(("fault schedule: seed %d, %d workers, %.0f s planned, %.0f s run, history %s\n\n"):format(
    o.seed, o.workers, o.seconds, R.now() - t0, history))
  io.write(check.table(legs))
  for _, msg in ipairs(failures) do io.stderr:write("UNSAFE: ", msg, "\n") end
  os.exit(#failures == 0 and 0 or 1)
end

return M
