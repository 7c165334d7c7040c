-- Before/after: W1 and W3 of fluxalock builds beside the C floor, runs
-- interleaved, on one redis-server of its own (loopback, stopped by PID).
--
--   make all bench/out/floor
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='./?.so;;' \
--     lua5.4 bench/ab.lua [name=DIR ...]
--
-- DIR is a tree with lua/ and fluxalock/core.so (a copy of a checkout after
-- make); without any, this checkout.  Every build runs the same drivers
-- (bench/fl.lua, bench/floor.c: the modes of bench/run.lua).  Each round
-- runs every implementation once, the order rotating; a W1 figure is
-- compared with the floor's in the same round, and the table gives medians
-- over the rounds.  On a shared 2-core machine the W1 rate depends mostly
-- on whether the scheduler puts the client and the server on one CPU (a
-- wake-up is then a context switch, not a cross-CPU interrupt): AB_PIN
-- fixes that, "same" (server and client on CPU 0: the figure is the CPU
-- cost of a pair, client and server together) or "cross" (server on 0,
-- client on 1: the wake-ups' latency); unset, the scheduler decides, as in
-- make bench.  Beside the rates: client CPU µs per pair (perf stat
-- task-clock) and server CPU µs per pair (/proc/PID/schedstat).
--
-- Environment: AB_ROUNDS (default 10), AB_SECONDS (per W1 run, default
-- 1.5), AB_HANDOFFS (W3 handoffs per round, default 20), AB_PIN.
local core = require "fluxalock.core"
local R = require "support.redis"

local q, sh = R.quote, R.sh
local ROUNDS = tonumber(os.getenv("AB_ROUNDS")) or 10
local SECONDS = tonumber(os.getenv("AB_SECONDS")) or 1.5
local HANDOFFS = tonumber(os.getenv("AB_HANDOFFS")) or 20
local PIN = os.getenv("AB_PIN")
local ROOT = sh("pwd"):gsub("%s+$", "")
local OUT = ROOT .. "/bench/out"

local CLIENT_CPU = ({ same = "taskset -c 0 ", cross = "taskset -c 1 " })[PIN or ""] or ""
local HAVE_PERF = os.execute("perf stat -x, -e task-clock -o /dev/null true >/dev/null 2>&1")

local impls = { { name = "floor", cmd = q(OUT .. "/floor") } }
local builds = { ... }
if #builds == 0 then builds = { "this=" .. ROOT } end
for _, b in ipairs(builds) do
  local name, dir = b:match("^([^=]+)=(.+)$")
  if not name then error("usage: ab.lua [name=DIR ...]", 0) end
  impls[#impls + 1] = {
    name = name,
    cmd = ("env LUA_PATH=%s LUA_CPATH=%s lua5.4 %s"):format(q(dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;;"),
      q(dir .. "/?.so;;"), q(ROOT .. "/bench/fl.lua")),
  }
end

local server = R.start {}
if PIN then os.execute(("taskset -pc 0 %d >/dev/null"):format(server.pid)) end

local function server_ns()
  local f = assert(io.open(("/proc/%d/schedstat"):format(server.pid)))
  local ns = f:read("n")
  f:close()
  return ns
end

local seq = 0
-- one driver run: its header fields and samples, and its task-clock in ms
local function drive(impl, mode, key, start, stop, rounds)
  seq = seq + 1
  local out = ("%s/ab%d.txt"):format(OUT, seq)
  local perf = ("%s.perf"):format(out)
  local pre = HAVE_PERF and ("perf stat -x, -e task-clock -o %s "):format(q(perf)) or ""
  return out, ("%s%s%s %s %d %s %.6f %.6f %s %d"):format(pre, CLIENT_CPU, impl.cmd, mode,
    server.port, q(out), start or 0, stop or 0, q(key), rounds or 0), perf
end

local function collect(out, perf)
  local f = assert(io.open(out), "a driver failed: " .. out)
  local head = f:read("l")
  local res, samples = {}, {}
  for k, v in head:gmatch("([%w_]+)=([%d.]+)") do res[k] = tonumber(v) end
  for v in f:lines("n") do samples[#samples + 1] = v end
  f:close()
  os.remove(out)
  local p = io.open(perf)
  if p then
    for l in p:lines() do
      local ms = l:match("^([%d.]+),[^,]*,task%-clock")
      if ms then res.cpu_ms = tonumber(ms) end
    end
    p:close()
    os.remove(perf)
  end
  return res, samples
end

local function median(list)
  local s = { table.unpack(list) }
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local results = {}
local function add(impl, metric, v)
  local r = results[impl] or {}
  results[impl] = r
  r[metric] = r[metric] or {}
  table.insert(r[metric], v)
end

local function w1(impl, round)
  local start = core.now() + 0.3
  local out, cmd, perf = drive(impl, "w1", ("w1:%s:%d"):format(impl.name, round), start, start + SECONDS)
  local s0 = server_ns()
  os.execute(cmd)
  local ns = server_ns() - s0
  local res = collect(out, perf)
  add(impl.name, "pairs/s", res.count / res.elapsed)
  if res.cpu_ms then add(impl.name, "client µs/pair", res.cpu_ms * 1000 / res.total) end
  add(impl.name, "server µs/pair", ns / 1000 / res.total)
  return res.count / res.elapsed
end

local function w3(impl, round)
  local key = ("w3:%s:%d"):format(impl.name, round)
  local oa, ca, pa = drive(impl, "w3a", key, 0, 0, HANDOFFS)
  local ob, cb, pb = drive(impl, "w3b", key, 0, 0, HANDOFFS)
  os.execute(ca .. " & " .. cb .. " & wait")
  local _, a = collect(oa, pa)
  local _, b = collect(ob, pb)
  local ms = {}
  for i = 1, HANDOFFS do ms[i] = (b[i] - a[i]) * 1000 end
  table.sort(ms)
  add(impl.name, "W3 median ms", median(ms))
  add(impl.name, "W3 p90 ms", ms[math.max(1, math.ceil(0.9 * #ms))])
end

local t0 = core.now()
local ok, err = pcall(function()
  for round = 1, ROUNDS do
    local rate = {}
    for i = 1, #impls do
      local impl = impls[(i + round - 2) % #impls + 1]
      rate[impl.name] = w1(impl, round)
    end
    for _, impl in ipairs(impls) do add(impl.name, "W1 × floor", rate[impl.name] / rate.floor) end
    for i = 1, #impls do w3(impls[(i + round - 2) % #impls + 1], round) end
    io.stderr:write(("ab: round %d/%d (%.0f s)\n"):format(round, ROUNDS, core.now() - t0))
  end
end)
server:stop()
os.execute("rm -rf " .. q(server.dir))
if not ok then error(err, 0) end

local f = io.open("/proc/loadavg")
local load = f and f:read("l"):match("^(%S+ %S+ %S+)") or "?"
if f then f:close() end
print(("W1/W3 before/after, %s UTC, %d rounds, W1 %g s a run, %d handoffs a round, pin %s, load %s"):format(
  os.date("!%Y-%m-%d %H:%M"), ROUNDS, SECONDS, HANDOFFS, PIN or "none", load))
print()
local metrics = { "pairs/s", "W1 × floor", "client µs/pair", "server µs/pair", "W3 median ms", "W3 p90 ms" }
local head, rule = { "| median over rounds" }, { "|---" }
for _, impl in ipairs(impls) do head[#head + 1] = impl.name rule[#rule + 1] = "---:" end
print(table.concat(head, " | ") .. " |")
print(table.concat(rule, "|") .. "|")
for _, m in ipairs(metrics) do
  local row = { "| " .. m }
  for _, impl in ipairs(impls) do
    local l = results[impl.name][m]
    local v = l and median(l)
    row[#row + 1] = v and (v >= 100 and ("%.0f"):format(v) or ("%.3f"):format(v)) or ""
  end
  print(table.concat(row, " | ") .. " |")
end
local r = {}
for _, impl in ipairs(impls) do
  local l = results[impl.name]["W1 × floor"]
  table.sort(l)
  r[#r + 1] = ("%s %.2f-%.2f"):format(impl.name, l[1], l[#l])
end
print()
print("W1 × floor, range over rounds: " .. table.concat(r, ", "))
