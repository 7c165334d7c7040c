-- make bench: fluxalock against the C floor (bench/floor.c) and redis-py's
-- Lock, on a redis-server of its own (loopback, free port, stopped by PID).
--
-- The machine is noisy and shared, so absolute numbers mean little: every
-- workload runs ROUNDS times, the implementations interleaved (the order
-- rotates each round), and the table shows medians over the rounds and each
-- figure's ratio to the floor's in this same run.
--
-- Environment: BENCH_SECONDS (per run, default 3), BENCH_ROUNDS (default 3),
-- BENCH_HANDOFFS (per round, default 20), BENCH_CYCLES (W5, default 1e6),
-- BENCH_OUT (data files and the plot, default bench/out).
local core = require "fluxalock.core"
local R = require "support.redis"

local q, sh = R.quote, R.sh
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 3
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3
local HANDOFFS = tonumber(os.getenv("BENCH_HANDOFFS")) or 20
local CYCLES = tonumber(os.getenv("BENCH_CYCLES")) or 1000000
local OUT = os.getenv("BENCH_OUT") or "bench/out"
local LEAD = 1.0 -- seconds for every process of a run to start (python is slow to)

local ROOT = sh("pwd"):gsub("%s+$", "")
local LUAENV = ("LUA_PATH=%s LUA_CPATH=%s"):format(
  q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), q(ROOT .. "/?.so;;"))
local IMPLS = {
  { name = "floor", cmd = q(ROOT .. "/bench/out/floor") }, -- built there by make bench
  { name = "fluxalock", cmd = LUAENV .. " lua5.4 bench/fl.lua" },
  { name = "redis-py", cmd = "/usr/bin/python3 bench/rpy.py" },
}
-- the commands each implementation sends itself (the rest of INFO
-- commandstats are calls made inside its scripts)
local TOPLEVEL = {
  floor = { set = true, evalsha = true, eval = true, script = true },
  ["redis-py"] = { set = true, evalsha = true, eval = true, script = true },
  fluxalock = { evalsha = true, eval = true, blpop = true, script = true, ping = true },
}

os.execute("mkdir -p " .. q(OUT))
local server = R.start {}
local PORT = server.port
local seq = 0

-- ---- running drivers ------------------------------------------------------

-- run the given {impl, mode, key, rounds} jobs at once, between start and
-- stop (monotonic seconds); returns their parsed outputs
local function run(jobs, start, stop)
  local parts = {}
  for i, j in ipairs(jobs) do
    seq = seq + 1
    j.out = ("%s/r%d.txt"):format(OUT, seq)
    j.err = j.out .. ".err"
    os.remove(j.out)
    parts[i] = ("%s %s %d %s %.6f %.6f %s %d 2>%s &"):format(j.impl.cmd, j.mode, PORT,
      q(j.out), start or 0, stop or 0, q(j.key), j.rounds or 0, q(j.err))
  end
  os.execute(table.concat(parts, " ") .. " wait")
  for _, j in ipairs(jobs) do
    local f = io.open(j.out)
    if not f then
      local e = io.open(j.err)
      error(("%s %s failed: %s"):format(j.impl.name, j.mode, e and e:read("a") or "?"))
    end
    local head = f:read("l")
    j.res = {}
    for k, v in head:gmatch("([%w_]+)=([%d.]+)") do j.res[k] = tonumber(v) end
    j.samples = {}
    for v in f:lines("n") do j.samples[#j.samples + 1] = v end
    f:close()
    os.remove(j.out)
    os.remove(j.err)
  end
  return jobs
end

local function pct(sorted, p)
  local n = #sorted
  if n == 0 then return 0 / 0 end
  return sorted[math.max(1, math.ceil(p * n))]
end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return s[(n + 1) // 2] end
  return (s[n // 2] + s[n // 2 + 1]) / 2
end

local function commandstats()
  local t = {}
  for name, calls in server:cli("INFO", "commandstats"):gmatch("cmdstat_([%w|_-]+):calls=(%d+)") do
    t[name:lower()] = tonumber(calls)
  end
  return t
end

-- results[workload][impl][metric] = list over rounds
local results = {}
local function add(w, impl, metric, v)
  results[w] = results[w] or {}
  results[w][impl] = results[w][impl] or {}
  local l = results[w][impl][metric] or {}
  results[w][impl][metric] = l
  l[#l + 1] = v
end

-- ---- the workloads ----------------------------------------------------------

local function w1(impl, round)
  local start = core.now() + LEAD
  local j = run({ { impl = impl, mode = "w1", key = ("w1:%s:%d"):format(impl.name, round) } },
    start, start + SECONDS)[1]
  table.sort(j.samples)
  add("W1", impl.name, "pairs/s", j.res.count / j.res.elapsed)
  add("W1", impl.name, "p50 us", pct(j.samples, 0.5))
  add("W1", impl.name, "p99 us", pct(j.samples, 0.99))
end

local function w2(impl, nproc)
  local w = "W2x" .. nproc
  server:cli("DEL", "bench:holders", "w2")
  local before = commandstats()
  local start = core.now() + LEAD
  local jobs = {}
  for i = 1, nproc do jobs[i] = { impl = impl, mode = "w2", key = "w2" } end
  run(jobs, start, start + SECONDS)
  local after = commandstats()
  local all, count, total, violations, busiest = {}, 0, 0, 0, 0
  for _, j in ipairs(jobs) do
    for _, v in ipairs(j.samples) do all[#all + 1] = v end
    count = count + j.res.count
    total = total + j.res.total
    violations = violations + j.res.violations
    busiest = math.max(busiest, j.res.count)
  end
  table.sort(all)
  add(w, impl.name, "acq/s", count / jobs[1].res.elapsed)
  add(w, impl.name, "p50 us", pct(all, 0.5))
  add(w, impl.name, "p99 us", pct(all, 0.99))
  add(w, impl.name, "max us", all[#all])
  add(w, impl.name, "busiest share", busiest / count)
  add(w, impl.name, "violations", violations)
  if nproc == 8 then
    -- every acquisition (also those after the window) against every command
    -- the run caused; the workload's own INCR/DECR of the holders counter
    -- (one each per acquisition) and the runner's INFO are not the lock's
    local cmds, top = 0, 0
    for name, calls in pairs(after) do
      local d = calls - (before[name] or 0)
      if name ~= "info" then cmds = cmds + d end
      if TOPLEVEL[impl.name][name] then top = top + d end
    end
    cmds = cmds - 2 * total
    add("W4", impl.name, "commands/acq", cmds / total)
    add("W4", impl.name, "requests/acq", top / total)
  end
end

local handoffs = {} -- impl -> every handoff latency, ms
local function w3(impl, round)
  local key = ("w3:%s:%d"):format(impl.name, round)
  local a, b = table.unpack(run({
    { impl = impl, mode = "w3a", key = key, rounds = HANDOFFS },
    { impl = impl, mode = "w3b", key = key, rounds = HANDOFFS },
  }))
  local h = handoffs[impl.name] or {}
  handoffs[impl.name] = h
  local this = {}
  for i = 1, HANDOFFS do
    local ms = (b.samples[i] - a.samples[i]) * 1000
    h[#h + 1] = ms
    this[#this + 1] = ms
  end
  table.sort(this)
  add("W3", impl.name, "median ms", pct(this, 0.5))
  add("W3", impl.name, "p90 ms", pct(this, 0.9))
end

local function w5()
  local fl = IMPLS[2]
  local j = run({ { impl = fl, mode = "w5", key = "w5", rounds = CYCLES } })[1]
  return j.res
end

-- ---- main -------------------------------------------------------------------

local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

local t_begin = core.now()
local load_before = loadavg()
io.stderr:write(("bench: redis-server %s on 127.0.0.1:%d, %d rounds of %g s runs\n"):format(
  server:cli("INFO", "server"):match("redis_version:(%S+)") or "?", PORT, ROUNDS, SECONDS))
local ran, mem = pcall(function()
  for round = 1, ROUNDS do
    local order = {}
    for i = 1, #IMPLS do order[i] = IMPLS[(i + round - 2) % #IMPLS + 1] end
    for _, impl in ipairs(order) do w1(impl, round) end
    for _, impl in ipairs(order) do w2(impl, 4) end
    for _, impl in ipairs(order) do w2(impl, 8) end
    for _, impl in ipairs(order) do w3(impl, round) end
    io.stderr:write(("bench: round %d/%d done (%.0f s)\n"):format(round, ROUNDS, core.now() - t_begin))
  end
  return w5()
end)
local load_after = loadavg()
-- the server goes, whatever happened (a failed driver raises above)
server:stop()
os.execute("rm -rf " .. q(server.dir))
if not ran then error(mem, 0) end

-- the W3 latencies, sorted, one file per implementation (for the plot)
for name, h in pairs(handoffs) do
  table.sort(h)
  local f = assert(io.open(("%s/handoff-%s.dat"):format(OUT, name), "w"))
  for i, v in ipairs(h) do f:write(("%.4f %.4f\n"):format(v, i / #h)) end
  f:close()
end

-- ---- the table ----------------------------------------------------------------

local function fmt(v)
  if v ~= v then return "n/a" end
  local a = math.abs(v)
  if a >= 1000 then return ("%.0f"):format(v) end
  if a >= 100 then return ("%.0f"):format(v) end
  if a >= 10 then return ("%.1f"):format(v) end
  if a >= 1 then return ("%.2f"):format(v) end
  if a == 0 then return "0" end
  return ("%.3f"):format(v)
end

local function ratio(v, f)
  if v ~= v or f ~= f or f == 0 then return "" end
  return ("%.2f"):format(v / f)
end

local function check(ok) return ok and "yes" or "**NO**" end

local function m(w, impl, metric)
  local l = results[w] and results[w][impl] and results[w][impl][metric]
  return l and median(l) or 0 / 0
end

local targets = {
  ["W1 pairs/s"] = function(v, f) return "≥ 0.9 × floor", check(v >= 0.9 * f) end,
  ["W2x8 acq/s"] = function(v, f) return "≥ floor", check(v >= f) end,
  ["W2x8 busiest share"] = function(v) return "≤ 0.25", check(v <= 0.25) end,
  ["W2x4 violations"] = function(v) return "0", check(v == 0) end,
  ["W2x8 violations"] = function(v) return "0", check(v == 0) end,
  ["W3 median ms"] = function(v) return "≤ 0.5 ms", check(v <= 0.5) end,
  ["W3 p90 ms"] = function(v) return "≤ 1 ms", check(v <= 1) end,
  ["W4 commands/acq"] = function(v) return "≤ 5", check(v <= 5) end,
}

local rows = {
  { "W1", "pairs/s" }, { "W1", "p50 us" }, { "W1", "p99 us" },
  { "W2x4", "acq/s" }, { "W2x4", "p50 us" }, { "W2x4", "p99 us" }, { "W2x4", "max us" },
  { "W2x4", "busiest share" }, { "W2x4", "violations" },
  { "W2x8", "acq/s" }, { "W2x8", "p50 us" }, { "W2x8", "p99 us" }, { "W2x8", "max us" },
  { "W2x8", "busiest share" }, { "W2x8", "violations" },
  { "W3", "median ms" }, { "W3", "p90 ms" },
  { "W4", "commands/acq" }, { "W4", "requests/acq" },
}
local LABEL = {
  W1 = "W1 uncontended", W2x4 = "W2 contended, 4 procs", W2x8 = "W2 contended, 8 procs",
  W3 = "W3 handoff", W4 = "W4 Redis load, 8 procs",
}
local FIGURE = {
  ["pairs/s"] = "pairs/s", ["acq/s"] = "acquisitions/s", ["busiest share"] = "busiest process's share",
  ["violations"] = "violations (two holders)", ["median ms"] = "median ms", ["p90 ms"] = "p90 ms",
  ["commands/acq"] = "all commands / acquisition", ["requests/acq"] = "requests sent / acquisition",
}
local function figure(w, metric)
  local us = metric:match("^(%w+) us$")
  if us then return ("%s µs %s"):format(us, w == "W1" and "per pair" or "to acquire") end
  return FIGURE[metric] or metric
end

local cpu = (sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "?")
print(("fluxalock bench, %s UTC, %s, %s cores, redis %s; %d rounds × %g s, medians; "
  .. "load average %s before, %s after"):format(os.date("!%Y-%m-%d %H:%M"), cpu,
  sh("nproc"):gsub("%s+$", ""), sh("redis-server --version"):match("v=(%S+)") or "?",
  ROUNDS, SECONDS, load_before, load_after))
print()
print("| workload | figure | floor (C) | fluxalock | × floor | redis-py | × floor | target (fluxalock) | met |")
print("|---|---|---:|---:|---:|---:|---:|---|---|")
for _, r in ipairs(rows) do
  local w, metric = r[1], r[2]
  local f, x, p = m(w, "floor", metric), m(w, "fluxalock", metric), m(w, "redis-py", metric)
  local target, met = "", ""
  local t = targets[w .. " " .. metric]
  if t then target, met = t(x, f) end
  print(("| %s | %s | %s | %s | %s | %s | %s | %s | %s |"):format(LABEL[w], figure(w, metric),
    fmt(f), fmt(x), ratio(x, f), fmt(p), ratio(p, f), target, met))
end
local per_lock = mem.lua_bytes_per_lock
print(("| W5 memory | Lua heap bytes per held lock (key %d B incl.) | | %s | | | | ≤ 256 + key | %s |"):format(
  mem.key_bytes, fmt(per_lock), check(per_lock <= 256 + mem.key_bytes)))
print(("| W5 memory | RSS bytes per held lock | | %s | | | | | |"):format(fmt(mem.rss_bytes_per_lock)))
local growth = mem.rss_after - mem.rss_before
print(("| W5 memory | RSS growth over %d obtain/release cycles (distinct keys) "
  .. "| | %s KiB (%s → %s KiB) | | | | < 1 MB | %s |"):format(mem.cycles,
  fmt(growth / 1024), fmt(mem.rss_before / 1024), fmt(mem.rss_after / 1024), check(growth < 1000000)))
io.stderr:write(("bench: done in %.0f s; handoff data in %s/handoff-*.dat\n"):format(
  core.now() - t_begin, OUT))
