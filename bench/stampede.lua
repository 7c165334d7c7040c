-- make bench, W6/W7 (issue 12): many coroutines in one event-loop process.
--
-- W6 stampede: N coroutines on one key, each holding the lock HOLD s (a
-- timer) once, waiting at most WAIT s.  W7 fan-out: N coroutines on N keys,
-- obtain + release.  fluxalock runs under host = "luv" (bench/stampede_fl.lua);
-- node-redlock 5 and redis-semaphore 5 on one ioredis connection run the
-- same workloads (bench/peers/stampede.js).  Each run is its own process
-- with a time limit (WAIT + 30 s): a run that collapses is counted, not
-- waited for.  While it runs, this process counts the server's clients
-- other than itself from its own connection: INFO clients every 5 ms, and
-- CLIENT LIST (each line not its own) every 0.5 s, or less often when
-- CLIENT LIST takes more than a fifth of that; the most seen is reported.
--
-- Memory per waiting coroutine: each run reads its Lua heap
-- (collectgarbage "count") and its resident set (VmRSS: the C heap, Lua's
-- included) right after every coroutine started its obtain, and in W6 again
-- when a tenth have obtained, and keeps the larger per-waiter figure; a run
-- of N bare coroutines that only yield gives what a coroutine costs without
-- fluxalock, which is subtracted (for node: N pending async functions).
--
-- Environment: STAMPEDE_N (default "100,1000,10000"), STAMPEDE_WAIT (30),
-- STAMPEDE_SAMPLE_MS (5),
-- STAMPEDE_BUDGET (seconds for the whole part, default 900),
-- STAMPEDE_IMPLS (default "fluxalock,node-redlock,redis-semaphore"),
-- STAMPEDE_LIB (the fluxalock tree the runs load, default this one: its lua/
-- and its built .so), STAMPEDE_CORE (a description of that core for the
-- table's first line and the plot), STAMPEDE_NPM (where bench/run.sh installed the node
-- peers, default build/bench-peers), BENCH_OUT (default bench/out).
-- Prints a markdown table; writes $BENCH_OUT/stampede-*.dat for
-- bench/stampede.gp.
local core = require "fluxalock.core"
local R = require "support.redis"

local q, sh = R.quote, R.sh
local ROOT = sh("pwd"):gsub("%s+$", "")
local OUT = os.getenv("BENCH_OUT") or "bench/out"
local WAIT = tonumber(os.getenv("STAMPEDE_WAIT")) or 30
local HOLD = 0.001
local LIMIT = WAIT + 30
-- the whole W6/W7 part: runs that would start after this many seconds are
-- left out (and listed), so a collapsing core cannot stretch make bench
local BUDGET = tonumber(os.getenv("STAMPEDE_BUDGET")) or 900
-- seconds between two samples of the connections (STAMPEDE_SAMPLE_MS=0:
-- none, to see what the sampling itself costs); INFO clients is O(1) for
-- the server, so it is asked often enough to see a W7 run of 10 ms
local SAMPLE = (tonumber(os.getenv("STAMPEDE_SAMPLE_MS")) or 5) / 1000
if SAMPLE <= 0 then SAMPLE = nil end
local LIST_EVERY = math.max(1, math.floor(0.5 / (SAMPLE or 0.5))) -- CLIENT LIST every 0.5 s
local LIB = os.getenv("STAMPEDE_LIB") or ROOT
local NPM = os.getenv("STAMPEDE_NPM") or (ROOT .. "/build/bench-peers")
local SIZES = {}
for n in (os.getenv("STAMPEDE_N") or "100,1000,10000"):gmatch("%d+") do SIZES[#SIZES + 1] = tonumber(n) end
local WANT = {}
for name in (os.getenv("STAMPEDE_IMPLS") or "fluxalock,node-redlock,redis-semaphore"):gmatch("[%w-]+") do
  WANT[name] = true
end

local LUAENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(
  q(LIB .. "/lua/?.lua;" .. LIB .. "/lua/?/init.lua;;"),
  q(LIB .. "/?.so;" .. ROOT .. "/bench/out/?.so;;")) -- bench/out: stampede_heap.so
local NODE = ("env NODE_PATH=%s node --expose-gc %s"):format(q(NPM .. "/node_modules"),
  q(ROOT .. "/bench/peers/stampede.js"))
local IMPLS, skipped = {}, {}
local function impl(name, cmd, runtime, needs)
  if not WANT[name] then return end
  if needs and not os.execute(("test -f %s/node_modules/%s/package.json"):format(q(NPM), needs)) then
    skipped[#skipped + 1] = ("%s (not installed in %s)"):format(name, NPM)
    return
  end
  IMPLS[#IMPLS + 1] = { name = name, cmd = cmd, runtime = runtime }
end
impl("fluxalock", LUAENV .. " lua5.4 " .. q(ROOT .. "/bench/stampede_fl.lua"), "lua")
impl("node-redlock", NODE .. " redlock", "node", "redlock")
impl("redis-semaphore", NODE .. " semaphore", "node", "redis-semaphore")
local BARE = { lua = LUAENV .. " lua5.4 " .. q(ROOT .. "/bench/stampede_fl.lua"), node = NODE .. " bare" }

os.execute("mkdir -p " .. q(OUT))
-- the server must not be the limit: 10,000 coroutines on 0.1's core open
-- about as many connections (bench/run.sh raised the fd limit to its hard
-- maximum; redis-server needs 32 descriptors beyond its clients)
local limit = sh("ulimit -n"):gsub("%s+$", "")
local fdmax = tonumber(limit) or (limit == "unlimited" and 1e6) or 1024
local server = R.start { args = { "--maxclients", tostring(math.min(20000, fdmax - 64)) } }
local PORT = server.port
local sampler = core.pool { host = "127.0.0.1", port = PORT, timeout = 10, connect_timeout = 5 }
local MYID = "id=" .. assert(sampler:call { "CLIENT", "ID" }) .. " "

-- connections on the server other than the sampler's, and how long asking took
local function connections()
  local t = core.now()
  local list = sampler:call { "CLIENT", "LIST" }
  if not list then return 0, core.now() - t end
  local n = 0
  for line in list:gmatch("[^\n]+") do
    if line:sub(1, #MYID) ~= MYID then n = n + 1 end
  end
  return n, core.now() - t
end

-- the same from INFO clients: the server's count of its clients, less the
-- sampler (nobody else is connected: run() waits for the previous run's
-- connections to go); O(1) for the server, where CLIENT LIST costs a line
-- per client and, with 10,000 clients, slowed the runs it measured
local function counted()
  local info = sampler:call { "INFO", "clients" } -- a sample lost to a busy server is skipped
  local n = info and tonumber(info:match("connected_clients:(%d+)"))
  return n and n - 1 or 0
end

local function parse(path)
  local f = io.open(path)
  if not f then return nil end
  local res = {}
  for k, v in (f:read("l") or ""):gmatch("([%w_]+)=(%S+)") do res[k] = tonumber(v) end
  local failures = {}
  for line in f:lines() do
    local n, msg = line:match("^(%d+) (.*)$")
    if n then failures[#failures + 1] = { n = tonumber(n), msg = msg } end
  end
  f:close()
  table.sort(failures, function(a, b) return a.n > b.n end)
  res.failures = failures
  return res
end

local seq = 0
-- one child run; returns its figures (nil and why when it left none) and
-- the most connections seen while it ran
local function run(cmd, mode, n)
  seq = seq + 1
  local out = ("%s/stampede-run%d.txt"):format(OUT, seq)
  os.remove(out)
  assert(sampler:call { "FLUSHALL" }) -- between runs the server is idle: this must work
  -- the previous run's connections are gone before this one starts
  local settle = core.now() + 10
  while connections() > 0 and core.now() < settle do core.sleep(0.05) end
  local pid = tonumber((sh(("exec 3>&-; timeout -k 5 %d %s %s %d %d %s %g %g >/dev/null 2>%s & echo $!"):format(
    LIMIT, cmd, mode, n, PORT, q(out), WAIT, HOLD, q(out .. ".err")))))
  local most = 0
  local k, listed = 0, 0
  while R.alive(pid) do
    if SAMPLE then
      local c = counted()
      if c > most then most = c end
      k = k + 1
      if k % LIST_EVERY == 0 and core.now() >= listed then
        local l, took = connections()
        if l > most then most = l end
        listed = core.now() + 4 * took
      end
    end
    core.sleep(SAMPLE or 0.02)
  end
  local res = parse(out)
  local ef = io.open(out .. ".err")
  local err = ef and ef:read("a") or ""
  if ef then ef:close() end
  os.remove(out)
  os.remove(out .. ".err")
  if not res then return nil, most, (err:gsub("%s+$", ""):sub(-300)) end
  res.stderr = err
  return res, most
end

local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

local t_begin, load_before = core.now(), loadavg()
io.stderr:write(("bench: W6/W7 on 127.0.0.1:%d (maxclients %s), N = %s, %s\n"):format(PORT,
  server:cli("CONFIG", "GET", "maxclients"):match("(%d+)%s*$") or "?",
  table.concat(SIZES, ", "), #IMPLS > 0 and "" or "nothing to run"))

-- rows[mode][n][impl] = figures
local rows, bare, notes = { w6 = {}, w7 = {} }, {}, {}
local ran, failure = pcall(function()
  for si, n in ipairs(SIZES) do
    bare[n] = {}
    for runtime, cmd in pairs(BARE) do
      local needs_node = runtime == "node"
      local used = false
      for _, im in ipairs(IMPLS) do if im.runtime == runtime then used = true end end
      if used or not needs_node then
        local res, _, why = run(cmd, "bare", n)
        bare[n][runtime] = res or { lua_per = 0, rss_per = 0 }
        if not res then notes[#notes + 1] = ("bare %s N=%d left no figures: %s"):format(runtime, n, why) end
      end
    end
    for _, mode in ipairs { "w6", "w7" } do
      rows[mode][n] = {}
      for k = 1, #IMPLS do
        local im = IMPLS[(k + si - 2) % #IMPLS + 1] -- the order rotates with N
        local t = core.now()
        if t - t_begin > BUDGET then
          notes[#notes + 1] = ("%s N=%d %s not run: the %g s budget (STAMPEDE_BUDGET) was spent"):format(
            mode:upper(), n, im.name, BUDGET)
          goto next
        end
        local res, most, why = run(im.cmd, mode, n)
        rows[mode][n][im.name] = { res = res, most = most, why = why }
        io.stderr:write(("bench: %s N=%d %s: %s, %.1f s\n"):format(mode:upper(), n, im.name,
          res and ("%d of %d obtained, %d connections"):format(res.obtained, n, most) or "no figures",
          core.now() - t))
        ::next::
      end
    end
  end
end)
local load_after = loadavg()
server:stop()
os.execute("rm -rf " .. q(server.dir))
if not ran then error(failure, 0) end

-- ---- figures ----------------------------------------------------------------

local function fig(mode, n, name)
  local r = rows[mode][n] and rows[mode][n][name]
  if not r or not r.res then return nil, r end
  local x, f = r.res, {}
  f.completion = x.elapsed
  f.obtained = x.obtained
  f.all = x.obtained == n and x.unfinished == 0
  f.acq = x.span > 0 and x.obtained / x.span or 0 / 0
  f.p99 = x.p99_ms
  f.release_max = x.release_max_ms
  f.conns = r.most
  -- the nominal hold, as the issue defines it: a hold timer that fires
  -- late (a busy loop) counts against the handoff; the mean measured hold
  -- is shown beside it
  if mode == "w6" and x.obtained > 0 then f.handoff = (x.span - x.obtained * HOLD) / x.obtained * 1000 end
  f.unfinished = x.unfinished
  local b = bare[n][name == "fluxalock" and "lua" or "node"]
  local w = x.mem_waiting
  if w > 0 then
    -- beyond what w bare coroutines (pending async functions) cost
    f.mem_rss = (x.mem_rss - b.rss_per * w) / w
    f.mem_heap = (x.mem_lua - b.lua_per * w) / w
    if x.mem_live and b.live_per then f.mem = (x.mem_live - b.live_per * w) / w end
  end
  f.short = x.elapsed < 2 * (SAMPLE or 0.02)
  f.failures = x.failures
  f.hold = x.obtained > 0 and x.held / x.obtained * 1000 or nil
  return f, r
end

local function fmt(v, digits)
  if v == nil or v ~= v then return "n/a" end
  if digits then return ("%." .. digits .. "f"):format(v) end
  local a = math.abs(v)
  if a >= 100 then return ("%.0f"):format(v) end
  if a >= 10 then return ("%.1f"):format(v) end
  if a >= 1 then return ("%.2f"):format(v) end
  if a == 0 then return "0" end
  return ("%.3f"):format(v)
end

-- which fluxalock ran: the branch and commit of STAMPEDE_LIB (and whether
-- core (csrc/, lua/) had uncommitted changes), then STAMPEDE_CORE, a free description
local function lib_label()
  local git = "git -C " .. q(LIB)
  local head = sh(git .. " log -1 --format='%h %cd' --date=format:'%Y-%m-%d' 2>/dev/null"):gsub("%s+$", "")
  local label = LIB
  if head ~= "" then
    local branch = sh(git .. " rev-parse --abbrev-ref HEAD 2>/dev/null"):gsub("%s+$", "")
    local dirty = sh(git .. " status --porcelain -- csrc lua 2>/dev/null"):find("%S") -- the core only
    label = ("%s at %s%s"):format(branch, head, dirty and " + uncommitted changes" or "")
  end
  local what = os.getenv("STAMPEDE_CORE")
  if not what or what == "" then return label end
  if head == "" then return what end -- a copy without git: the description says what it is
  return ("%s (%s)"):format(label, what)
end

local cpu = (sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "?")
print(("W6/W7, %s UTC, fluxalock core: %s; %s, %s cores, redis %s, node %s; one run each, "
  .. "wait %g s, hold %g ms; load average %s before, %s after"):format(os.date("!%Y-%m-%d %H:%M"),
  lib_label(), cpu, sh("nproc"):gsub("%s+$", ""), sh("redis-server --version"):match("v=(%S+)") or "?",
  sh("node --version 2>/dev/null"):gsub("%s+$", ""), WAIT, HOLD * 1000, load_before, load_after))
print()
print("| workload | N | implementation | completion s | ms per handoff beyond the hold | mean hold ms "
  .. "| most connections | acquisitions/s | p99 ms to acquire | slowest release ms | obtained / N "
  .. "| B per waiting coroutine: live heap (Lua/JS heap; resident set) |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
local LABEL = { w6 = "W6 stampede, 1 key", w7 = "W7 fan-out, N keys" }
local dat, short = {}, false
for _, mode in ipairs { "w6", "w7" } do
  for _, n in ipairs(SIZES) do
    for _, im in ipairs(IMPLS) do
      local f, r = fig(mode, n, im.name)
      if f then
        local got = ("%d / %d"):format(f.obtained, n)
        print(("| %s | %d | %s | %s | %s | %s | %d%s | %s | %s | %s | %s | %s (%s; %s) |"):format(LABEL[mode], n,
          im.name, fmt(f.completion), mode == "w6" and fmt(f.handoff) or "", mode == "w6" and fmt(f.hold) or "",
          f.conns, f.short and " †" or "", fmt(f.acq, 0), fmt(f.p99), fmt(f.release_max),
          f.all and got or "**" .. got .. "**", fmt(f.mem, 0), fmt(f.mem_heap, 0), fmt(f.mem_rss, 0)))
        short = short or f.short
        if f.unfinished > 0 then
          notes[#notes + 1] = ("%s N=%d %s: %d still waiting when the %d s limit ended the run"):format(
            mode:upper(), n, im.name, f.unfinished, LIMIT)
        end
        if mode == "w6" and f.handoff then
          dat[im.name] = dat[im.name] or {}
          dat[im.name][#dat[im.name] + 1] = ("%d %.4f %s"):format(n, f.handoff, f.all and 1 or 0)
        end
        for i = 1, math.min(3, #f.failures) do
          notes[#notes + 1] = ("%s N=%d %s: %d × \"%s\""):format(mode:upper(), n, im.name,
            f.failures[i].n, f.failures[i].msg)
        end
      else
        print(("| %s | %d | %s | %s | | | %s | | | | | |"):format(LABEL[mode], n, im.name,
          r and "no figures" or "not run", r and r.most or ""))
        if r then
          notes[#notes + 1] = ("%s N=%d %s left no figures: %s"):format(mode:upper(), n, im.name, r.why)
        end
      end
    end
  end
end
do
  local f = assert(io.open(OUT .. "/stampede-core.txt", "w"))
  f:write(lib_label(), ", ", os.date("!%Y-%m-%d"))
  f:close()
end
for name, lines in pairs(dat) do
  local f = assert(io.open(("%s/stampede-%s.dat"):format(OUT, name), "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
end

-- ---- targets (issue 12), at the largest N ---------------------------------------

local function check(ok) return ok and "yes" or "**NO**" end
local big = SIZES[#SIZES]
local x6, x7 = fig("w6", big, "fluxalock"), fig("w7", big, "fluxalock")
print()
print(("| target (fluxalock, N = %d) | measured | met |"):format(big))
print("|---|---|---|")
if x6 then
  print(("| W6: every coroutine obtains | %d / %d | %s |"):format(x6.obtained, big, check(x6.all)))
  print(("| W6: ≤ 1.5 ms per handoff beyond the hold | %s ms | %s |"):format(fmt(x6.handoff),
    check(x6.handoff and x6.handoff <= 1.5)))
  for _, peer in ipairs { "node-redlock", "redis-semaphore" } do
    local p = fig("w6", big, peer)
    if p and p.handoff and x6.handoff then
      local note = p.all and "" or (" (%s obtained %d / %d)"):format(peer, p.obtained, big)
      print(("| W6: ≥ 5 × better per handoff than %s | %s × (%s ms)%s | %s |"):format(peer,
        fmt(p.handoff / x6.handoff), fmt(p.handoff), note, check(p.handoff >= 5 * x6.handoff)))
    end
  end
  print(("| W6: at most max_connections + 1 = 5 connections | %d | %s |"):format(x6.conns, check(x6.conns <= 5)))
end
if x7 then
  local best, bname = nil, nil
  for _, peer in ipairs { "node-redlock", "redis-semaphore" } do
    local p = fig("w7", big, peer)
    if p and (not best or p.acq > best) then best, bname = p.acq, peer end
  end
  if best then
    print(("| W7: acquisitions/s ≥ 1.0 × the better node peer (%s, %s/s) | %s × | %s |"):format(bname,
      fmt(best, 0), fmt(x7.acq / best), check(x7.all and x7.acq >= best)))
  end
end
for _, f in ipairs { x6 or false, x7 or false } do
  if f then
    local which = f == x6 and "W6" or "W7"
    print(("| %s: ≤ 2 KiB of C and Lua heap per waiting coroutine beyond the coroutine | %s B | %s |"):format(
      which, fmt(f.mem, 0), check(f.mem and f.mem <= 2048)))
  end
end
for _, s in ipairs(skipped) do notes[#notes + 1] = "skipped: " .. s end
local heap_so = io.open(ROOT .. "/bench/out/stampede_heap.so")
if heap_so then heap_so:close() else
  notes[#notes + 1] = "the live heap was not measured: make bench builds bench/out/stampede_heap.so"
end
if short then
  table.insert(notes, 1, ("†: the run took less than two %g ms samples: its count can miss the peak"):format(
    (SAMPLE or 0.02) * 1000))
end
if #notes > 0 then
  print()
  for _, s in ipairs(notes) do print("- " .. s) end
end
io.stderr:write(("bench: W6/W7 done in %.0f s\n"):format(core.now() - t_begin))
