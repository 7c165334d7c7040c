-- make bench, the modes (issue 18), runnable alone:
--
--   lua5.4 bench/modes.lua        (from the checkout's root, after make)
--
-- W8 semaphore: N = 2000 coroutines in one luv process, limit = 10, holds
-- of 1 ms (bench/modes_fl.lua w8), beside redis-semaphore's Semaphore on
-- one ioredis connection (bench/peers/semaphore.js; installed by
-- bench/peers/install.sh, else W8 runs fluxalock alone).
-- W9 read-write: 1000 reader and 20 writer coroutines in one luv process,
-- 3 s, holds of 1 ms: reads/s, writes, the longest writer wait.
-- W2 fair: 8 processes on one key for 3 s, fair = true beside the plain
-- (unfair) obtain in the same run: acquisitions/s, top share, overtakes.
-- W1: uncontended obtain + release pairs/s of a plain lock, this tree and,
-- with MODES_BASE=<another built tree>, that one in the same run.
-- While W8 and W9 run, the server's clients other than this runner's one
-- are counted (INFO clients every 5 ms).  Prints a markdown table.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local core = require "fluxalock.core"
local R = require "support.redis"

local q, sh = R.quote, R.sh
local ROOT = sh("pwd"):gsub("%s+$", "")
local OUT = os.getenv("BENCH_OUT") or "bench/out"
local BASE = os.getenv("MODES_BASE")
local NPM = os.getenv("STAMPEDE_NPM") or (ROOT .. "/build/bench-peers")
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 3
local function luaenv(tree)
  return ("env LUA_PATH=%s LUA_CPATH=%s"):format(
    q(tree .. "/lua/?.lua;" .. tree .. "/lua/?/init.lua;;"), q(tree .. "/?.so;;"))
end
os.execute("mkdir -p " .. q(OUT))
local server = R.start {}
local side = core.pool { host = "127.0.0.1", port = server.port }
side:call { "PING" }

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function figures(line)
  local t = {}
  for k, v in (line or ""):gmatch("(%w[%w_]*)=([-%d.naif]+)") do t[k] = tonumber(v) end
  return t
end

-- run a shell command in the background until it wrote 'out', counting
-- the server's other clients meanwhile -> its figures, the most clients
local function run(cmd, out, limit)
  os.remove(out)
  local pid = tonumber((sh(("exec 3>&-; %s >%s.log 2>&1 & echo $!"):format(cmd, q(out)))))
  local most, t = 0, core.now() + (limit or 120)
  while not read(out) do
    local info = side:call { "INFO", "clients" }
    local n = tonumber(tostring(info):match("connected_clients:(%d+)")) or 0
    if n - 1 > most then most = n - 1 end
    if core.now() > t then
      os.execute("kill " .. pid)
      error(cmd .. ": no result in time; " .. (read(out .. ".log") or ""))
    end
    core.sleep(0.005)
  end
  os.execute(("while kill -0 %d 2>/dev/null; do sleep 0.01; done"):format(pid))
  return figures(read(out)), most
end

local rows = {}
local function row(...) rows[#rows + 1] = "| " .. table.concat({ ... }, " | ") .. " |" end

-- ---- W8 -----------------------------------------------------------------------
local N, LIMIT, HOLD = 2000, 10, 0.001
local ideal = N / LIMIT * HOLD
local fl8, c8 = run(("%s lua5.4 bench/modes_fl.lua w8 %d %s %d %d %g"):format(luaenv(ROOT), server.port,
  q(OUT .. "/w8-fl"), N, LIMIT, HOLD), OUT .. "/w8-fl")
local function w8row(name, r, conns)
  local beyond = (r.elapsed - ideal) * LIMIT / N * 1000
  row("W8 semaphore, " .. name, ("%.3f s"):format(r.elapsed), ("%.0f"):format(r.obtained / r.elapsed),
    ("%.3f"):format(beyond), tostring(r.most), tostring(r.over), tostring(conns), tostring(r.failed))
end
w8row("fluxalock (luv)", fl8, c8)
local peer8
if os.execute(("test -f %s/node_modules/redis-semaphore/package.json"):format(q(NPM))) then
  local c
  peer8, c = run(("env NODE_PATH=%s node bench/peers/semaphore.js %d %d %g %d %s"):format(q(NPM .. "/node_modules"),
    N, LIMIT, HOLD, server.port, q(OUT .. "/w8-peer")), OUT .. "/w8-peer")
  w8row("redis-semaphore (ioredis)", peer8, c)
end

-- ---- W9 -----------------------------------------------------------------------
local fl9, c9 = run(("%s lua5.4 bench/modes_fl.lua w9 %d %s 1000 20 %g %g"):format(luaenv(ROOT), server.port,
  q(OUT .. "/w9-fl"), SECONDS, HOLD), OUT .. "/w9-fl")

-- ---- W2 fair / unfair -----------------------------------------------------------
local function w2(fair)
  local start = core.now() + 1
  local cmds, outs = {}, {}
  for i = 1, 8 do
    outs[i] = ("%s/w2-%s-%d"):format(OUT, fair and "fair" or "plain", i)
    os.remove(outs[i])
    cmds[i] = ("%s lua5.4 bench/modes_fl.lua w2 %d %s w2%s %.6f %.6f %s"):format(luaenv(ROOT), server.port,
      q(outs[i]), fair and "f" or "p", start, start + SECONDS, fair and "1" or "0")
  end
  sh(table.concat(cmds, " & ") .. " & wait")
  local total, top, over, viol = 0, 0, 0, 0
  for i = 1, 8 do
    local r = figures(read(outs[i]))
    total = total + (r.count or 0)
    top = math.max(top, r.count or 0)
    over = over + (r.overtakes or 0)
    viol = viol + (r.violations or 0)
  end
  return total / SECONDS, top / math.max(1, total), over, viol
end
local p_rate, p_top, p_over, p_viol = w2(false)
local f_rate, f_top, f_over, f_viol = w2(true)

-- ---- W1 -------------------------------------------------------------------------
local function w1(tree, name)
  local out = ("%s/w1-%s"):format(OUT, name)
  local start = core.now() + 0.5
  sh(("%s lua5.4 bench/fl.lua w1 %d %s %.6f %.6f w1%s 0"):format(luaenv(tree), server.port, q(out),
    start, start + SECONDS, name))
  local r = figures(read(out))
  return r.count / r.elapsed
end
local w1_now = w1(ROOT, "this")
local w1_base = BASE and w1(BASE, "base")
server:stop()

print(("Modes, %s, %s; `lua5.4 bench/modes.lua`\n"):format(os.date("!%Y-%m-%d"), sh("uname -m"):gsub("%s+$", "")))
print("| workload | completion | grants/s | ms per grant beyond the hold | most inside | over the limit | connections | failed |")
print("|---|---|---|---|---|---|---|---|")
for _, r in ipairs(rows) do print(r) end
if peer8 then
  print(("\nW8: fluxalock's throughput is %.1f× redis-semaphore's (target ≥ 5×); connections %d (target ≤ max_connections + 1 = 5)")
    :format((fl8.obtained / fl8.elapsed) / (peer8.obtained / peer8.elapsed), c8))
end
print("\n| workload | figure | value | target |")
print("|---|---|---|---|")
print(("| W9 read-write (1000 readers, 20 writers, %g s) | reads/s | %.0f | |"):format(SECONDS, fl9.reads / SECONDS))
print(("| | writes | %d | |"):format(fl9.writes))
print(("| | longest writer wait | %.1f ms | ≤ 2 × (longest reader hold %.1f ms + 1 ms) = %.1f ms |"):format(
  fl9.writer_wait_max * 1000, fl9.reader_hold_max * 1000, 2 * (fl9.reader_hold_max * 1000 + 1)))
print(("| | overlaps, connections | %d, %d | 0, ≤ 5 |"):format(fl9.overlaps, c9))
print(("| W2 fair, 8 processes | acquisitions/s | %.0f (plain: %.0f, ratio %.2f) | ≥ 0.8 × plain |"):format(
  f_rate, p_rate, f_rate / p_rate))
print(("| | top share | %.3f (plain: %.3f) | ≤ 0.15 |"):format(f_top, p_top))
print(("| | overtakes | %d (plain: %d) | 0 |"):format(f_over, p_over))
print(("| | violations | %d (plain: %d) | 0 |"):format(f_viol, p_viol))
print(("| W1 plain, uncontended | pairs/s | %.0f%s | no worse than before |"):format(w1_now,
  w1_base and (" (before: %.0f, ratio %.2f)"):format(w1_base, w1_now / w1_base) or ""))
