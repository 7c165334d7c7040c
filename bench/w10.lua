-- make bench, W10 (issue 19): the stampede guard in a real web server.
--
-- Two processes of one service (examples/http_service.lua: lua-http on Lua
-- 5.4 under the cqueues host, a per-process cache fresh for 0.5 s) in front
-- of examples/slow_backend.lua (20 ms a call), driven by wrk for W10_SECONDS
-- (5) with W10_CONNECTIONS (400) connections over two threads, one thread
-- per service, on W10_KEYS (20) keys.  Implementations: the service with
-- `once`, with `obtain`, with no lock at all, with no lock and a cache that
-- never expires (what lua-http serves here at most), and the same service for node
-- http with node-redlock 5 and redis-semaphore 5 on ioredis
-- (bench/peers/http_service.js).  Each gets a fresh backend and a flushed
-- redis-server, and each service is asked for every key once before wrk
-- starts (those backend calls are not counted).  While wrk runs, this process reads CLIENT LIST every
-- 0.1 s and keeps the most connections seen (its own not counted).
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='./?.so;;' lua5.4 bench/w10.lua
--
-- The implementations take turns for W10_ROUNDS (2) rounds; each is reported
-- by its round with the most requests per second.
--
-- Environment: W10_IMPLS (default "once,obtain,none,node-redlock,redis-semaphore"),
-- W10_SECONDS, W10_CONNECTIONS, W10_KEYS, W10_NPM (the node peers' install,
-- default build/bench-peers: bench/peers/install.sh), BENCH_OUT (bench/out).
-- Prints a markdown table and the targets; writes $BENCH_OUT/w10.dat for
-- bench/w10.gp.
local core = require "fluxalock.core"
local R = require "support.redis"
if not pcall(require, "http.request") then -- Debian's lua-http is packaged for 5.1-5.3
  package.path = package.path .. ";/usr/share/lua/5.3/?.lua;/usr/share/lua/5.3/?/init.lua"
    .. ";/usr/share/lua/5.2/?.lua;/usr/share/lua/5.2/?/init.lua"
end

local q, sh = R.quote, R.sh
local ROOT = sh("pwd"):gsub("%s+$", "")
local OUT = os.getenv("BENCH_OUT") or "bench/out"
local SECONDS = tonumber(os.getenv("W10_SECONDS")) or 5
local CONNS = tonumber(os.getenv("W10_CONNECTIONS")) or 400
local KEYS = tonumber(os.getenv("W10_KEYS")) or 20
local NPM = os.getenv("W10_NPM") or (ROOT .. "/build/bench-peers")
local ROUNDS = tonumber(os.getenv("W10_ROUNDS")) or 2
local IMPLS = os.getenv("W10_IMPLS") or "once,obtain,none,ceiling,node-redlock,redis-semaphore"

local LABEL = {
  once = "fluxalock `once` (lua-http, cqueues)",
  obtain = "fluxalock `obtain` (lua-http, cqueues)",
  none = "no lock (lua-http, cqueues)",
  ceiling = "lua-http alone: no lock, the cache never expires",
  ["node-redlock"] = "node http + ioredis + node-redlock 5",
  ["redis-semaphore"] = "node http + ioredis + redis-semaphore 5 Mutex",
}

-- names in the plot
local SHORT = { none = "no lock", ceiling = "lua-http alone" }

-- every process this bench started and has not stopped yet (stopped on
-- the way out, also when a run fails)
local started = {}

-- a process started in the background, its output in a file; 'ready' is
-- the line it prints when it accepts -> { pid, out }, and the port it printed
local function spawn(cmd, what)
  local out = os.tmpname()
  local pid = tonumber((sh(("exec 3>&-; %s > %s 2>&1 & echo $!"):format(cmd, q(out)))))
  started[pid] = true
  local port
  R.until_true(function()
    local f = io.open(out)
    local text = f and f:read("a") or ""
    if f then f:close() end
    port = tonumber(text:match("listening on http://127%.0%.0%.1:(%d+)"))
    return port ~= nil or not R.alive(pid)
  end, 20, what)
  if not port then
    local f = io.open(out)
    error(what .. " did not start: " .. (f and f:read("a") or "?"))
  end
  return { pid = pid, out = out }, port
end

local function stop(p)
  if not p then return end
  started[p.pid] = nil
  if R.alive(p.pid) then
    os.execute(("kill %d 2>/dev/null"):format(p.pid))
    R.until_true(function() return not R.alive(p.pid) end, 10, "process " .. p.pid .. " to end")
  end
  os.remove(p.out)
end

-- GET urls one after the other (lua-http's client, in a cqueue) -> the bodies
local function get(urls)
  local cqueues = require "cqueues"
  local request = require "http.request"
  local bodies = {}
  local cq = cqueues.new()
  cq:wrap(function()
    for i, url in ipairs(urls) do
      local h, st = request.new_from_uri(url):go(5)
      bodies[i] = h and st:get_body_as_string(5)
    end
  end)
  assert(cq:loop())
  return bodies
end

-- the backend's counts
local function backend_stats(port)
  local body = get { ("http://127.0.0.1:%d/stats"):format(port) }[1]
  assert(body, "no answer from the backend's /stats")
  return tonumber(body:match("calls (%d+)")), tonumber(body:match("overlaps (%d+)"))
end

local LUA = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"),
  q(ROOT .. "/?.so;;"))

local function services(impl, server, bport)
  local list, ports = {}, {}
  for n = 1, 2 do
    local cmd
    if impl == "once" or impl == "obtain" or impl == "none" or impl == "ceiling" then
      cmd = ("%s FLUXALOCK_URL=%s lua5.4 %s --port 0 --backend http://127.0.0.1:%d --name s%d --guard %s%s"):format(
        LUA, q(server.url), q(ROOT .. "/examples/http_service.lua"), bport, n, impl == "ceiling" and "none" or impl,
        impl == "ceiling" and " --fresh 1e9" or "")
    else
      cmd = ("env NODE_PATH=%s node %s %s 0 http://127.0.0.1:%d %d s%d"):format(q(NPM .. "/node_modules"),
        q(ROOT .. "/bench/peers/http_service.js"), impl == "node-redlock" and "redlock" or "semaphore", bport,
        server.port, n)
    end
    list[n], ports[n] = spawn(cmd, impl .. " service " .. n)
  end
  return list, ports
end

-- the server's clients now, this process's own connection not counted
local function clients(pool)
  local list = assert(pool:call { "CLIENT", "LIST" })
  local n = 0
  for _ in list:gmatch("[^\n]+") do n = n + 1 end
  return n - 1
end

local function run(impl, server, pool)
  local backend, bport = spawn(("%s lua5.4 %s --port 0 --delay 0.02"):format(LUA,
    q(ROOT .. "/examples/slow_backend.lua")), "the backend")
  server:cli("FLUSHALL")
  local procs, ports = services(impl, server, bport)
  -- warm: every key once on each service (not counted), so that no run
  -- starts with all of its 400 connections missing an empty cache at once
  local warm = {}
  for _, port in ipairs(ports) do
    for k = 0, KEYS - 1 do warm[#warm + 1] = ("http://127.0.0.1:%d/item/k%d"):format(port, k) end
  end
  get(warm)
  local calls0, overlaps0 = backend_stats(bport)
  local out = os.tmpname()
  local wrk = tonumber((sh(("exec 3>&-; W10_PORTS=%s W10_KEYS=%d wrk -t2 -c%d -d%ds --timeout 10s -s %s "
    .. "http://127.0.0.1:%d > %s 2>&1 & echo $!"):format(q(ports[1] .. "," .. ports[2]), KEYS, CONNS, SECONDS,
    q(ROOT .. "/bench/w10_wrk.lua"), ports[1], q(out)))))
  started[wrk] = true
  local most = 0
  while R.alive(wrk) do
    local n = clients(pool)
    if n > most then most = n end
    core.sleep(0.1)
  end
  started[wrk] = nil
  local f = io.open(out)
  local text = f and f:read("a") or ""
  if f then f:close() end
  os.remove(out)
  local calls, overlaps = backend_stats(bport)
  calls, overlaps = calls - calls0, overlaps - overlaps0
  for _, p in ipairs(procs) do stop(p) end
  stop(backend)
  local r = { impl = impl, connections = most, calls = calls, overlaps = overlaps }
  local line = text:match("W10 ([^\n]+)")
  if not line then
    r.failed = text:gsub("%s+", " ")
    return r
  end
  for k, v in line:gmatch("([%w_]+)=(%d+)") do r[k] = tonumber(v) end
  r.rps = r.requests / (r.duration_us / 1e6)
  return r
end

local server = R.start()
local pool = core.pool { host = "127.0.0.1", port = server.port, timeout = 5 }
local have_node = os.execute(("test -f %s/node_modules/redlock/package.json && command -v node >/dev/null"):format(
  q(NPM)))
local load_before = sh("cut -d' ' -f1 /proc/loadavg"):gsub("%s+$", "")
local results, order = {}, {}
for impl in IMPLS:gmatch("[%w-]+") do
  if (impl == "node-redlock" or impl == "redis-semaphore") and not have_node then
    io.stderr:write("w10: the node peers are not installed (bench/peers/install.sh): ", impl, " left out\n")
  else
    order[#order + 1] = impl
  end
end
-- the implementations take turns, round after round; each keeps its round
-- with the most requests per second (the machine is shared: a round that
-- other work slowed down says less about the implementation)
local ran, err = pcall(function()
  for _ = 1, ROUNDS do
    for i, impl in ipairs(order) do
      local r = run(impl, server, pool)
      local best = results[i]
      if not best or best.failed or (not r.failed and r.rps > best.rps) then results[i] = r end
    end
  end
end)
local load_after = sh("cut -d' ' -f1 /proc/loadavg"):gsub("%s+$", "")
for pid in pairs(started) do os.execute(("kill %d 2>/dev/null"):format(pid)) end
server:stop()
if not ran then error(err, 0) end

print(("W10, %s UTC, %s, %s cores, redis %s, node %s; wrk -t2 -c%d -d%ds, 2 services, %d keys, "
  .. "cache fresh 0.5 s, backend 20 ms; best of %d rounds; load average %s before, %s after"):format(
  os.date("!%Y-%m-%d %H:%M"),
  (sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "?"), sh("nproc"):gsub("%s+$", ""),
  sh("redis-server --version"):match("v=(%S+)") or "?", sh("node --version 2>/dev/null"):gsub("%s+$", ""),
  CONNS, SECONDS, KEYS, ROUNDS, load_before, load_after))
print()
print("| service | req/s | p50 ms | p99 ms | errors (non-2xx / socket) | backend calls | "
  .. "backend calls of one key at once | most Redis connections |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
os.execute("mkdir -p " .. q(OUT))
local dat = assert(io.open(OUT .. "/w10.dat", "w"))
local by = {}
for i, r in ipairs(results) do
  by[r.impl] = r
  if r.failed then
    print(("| %s | failed: %s | | | | | | |"):format(LABEL[r.impl], r.failed:sub(1, 200)))
  else
    print(("| %s | %.0f | %.1f | %.1f | %d / %d | %d | %s | %d |"):format(LABEL[r.impl], r.rps, r.p50_us / 1000,
      r.p99_us / 1000, r.non2xx, r.errors, r.calls, r.overlaps == 0 and "never" or r.overlaps .. " times",
      r.connections))
    dat:write(("%d \"%s\" %.3f %.3f\n"):format(i - 1, SHORT[r.impl] or r.impl, r.p99_us / 1000, r.p50_us / 1000))
  end
end
dat:close()

-- the targets (issue 19)
local once, none = by.once, by.none
local best
for _, peer in ipairs { "node-redlock", "redis-semaphore" } do
  local r = by[peer]
  if r and not r.failed and (not best or r.p99_us < best.p99_us) then best = r end
end
print()
print("| target | measured | met |")
print("|---|---|---|")
if once and not once.failed and best then
  print(("| p99 with `once` ≤ ¼ of the better node peer's (%s, %.1f ms) | %.1f ms = %.2f × | %s |"):format(
    best.impl, best.p99_us / 1000, once.p99_us / 1000, once.p99_us / best.p99_us,
    once.p99_us * 4 <= best.p99_us and "yes" or "no"))
end
if once and none and not once.failed and not none.failed then
  print(("| req/s with `once` ≥ 0.9 × no lock (%.0f) | %.0f = %.2f × | %s |"):format(none.rps, once.rps,
    once.rps / none.rps, once.rps >= 0.9 * none.rps and "yes" or "no"))
end
local ceiling = by.ceiling
if once and ceiling and not once.failed and not ceiling.failed then
  print(("| (for scale) req/s with `once` beside lua-http alone (%.0f) | %.2f × | |"):format(ceiling.rps,
    once.rps / ceiling.rps))
end
if once and not once.failed then
  print(("| backend calls of one key never overlap (`once`) | %d | %s |"):format(once.overlaps,
    once.overlaps == 0 and "yes" or "no"))
end
