-- One W6/W7 run of fluxalock under host = "luv" (started by bench/stampede.lua):
--
--   lua5.4 bench/stampede_fl.lua MODE N PORT OUT WAIT HOLD
--
-- MODE w6: N coroutines obtain one key (wait WAIT s), hold it HOLD s across a
-- uv timer, release; w7: N coroutines on N distinct keys, obtain + release;
-- bare: N coroutines that only yield (the memory baseline: what a coroutine
-- costs before it calls fluxalock).  Writes one line of name=value figures
-- to OUT, the failures' messages after it.  On SIGTERM (the runner's time
-- limit) it writes what it has so far and exits.
local uv = require "luv"
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"

local mode, N, PORT, OUT = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
local WAIT, HOLD = tonumber(arg[5]) or 30, tonumber(arg[6]) or 0.001
local TTL = WAIT + 10 -- obtain refuses a wait longer than the ttl
local now = core.now

-- the heap now: Lua's own count, the bytes malloc has handed out and not
-- had back (bench/stampede_heap.c, built by make bench: Lua's allocations
-- are part of it, and so is every C allocation of the library), and the
-- process's resident set (a high-water mark: malloc keeps freed pages)
local has_live, live_heap = pcall(require, "stampede_heap")
local function heap()
  collectgarbage("collect")
  local f = assert(io.open("/proc/self/status"))
  local rss = tonumber(f:read("a"):match("VmRSS:%s*(%d+)")) * 1024
  f:close()
  return collectgarbage("count") * 1024, rss, has_live and live_heap() or 0 / 0
end

local function write(res, failures)
  local f = assert(io.open(OUT .. ".tmp", "w"))
  local names = {}
  for k in pairs(res) do names[#names + 1] = k end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = ("%s=%.6f"):format(k, res[k]) end
  f:write(table.concat(names, " "), "\n")
  for msg, n in pairs(failures or {}) do f:write(("%d %s\n"):format(n, msg)) end
  f:close()
  os.rename(OUT .. ".tmp", OUT)
end

local lua0, rss0, live0 = heap()

if mode == "bare" then
  local cos = {}
  for i = 1, N do
    cos[i] = coroutine.create(function() coroutine.yield() end)
    coroutine.resume(cos[i])
  end
  local lua1, rss1, live1 = heap()
  for i = 1, N do coroutine.resume(cos[i]) end
  write { lua_per = (lua1 - lua0) / N, rss_per = (rss1 - rss0) / N, live_per = (live1 - live0) / N }
  os.exit(0)
end

fluxalock.configure { host = "luv", pools = { default = ("redis://127.0.0.1:%d/0"):format(PORT) } }
local locker = fluxalock.locker()

local st = { obtained = 0, failed = 0, returned = 0, held = 0, mem_lua = 0, mem_rss = 0, mem_live = 0,
  mem_waiting = 0, release_max = 0 }
local failures, acquire = {}, {}
local t0, last_release = 0, 0

-- the heap with 'waiting' coroutines inside obtain; the largest per-waiter
-- figure of the samples is kept, of samples with at least half of them
-- waiting (with a few left, fixed costs would pass for theirs)
local function sample_heap()
  local waiting = N - st.returned
  if waiting <= 0 or waiting < N / 2 then return end
  local lua1, rss1, live1 = heap()
  local used = has_live and live1 - live0 or rss1 - rss0
  if st.mem_waiting == 0 or used / waiting > (has_live and st.mem_live or st.mem_rss) / st.mem_waiting then
    st.mem_lua, st.mem_rss, st.mem_live, st.mem_waiting = lua1 - lua0, rss1 - rss0, live1 - live0, waiting
  end
end

local function sleep(s)
  local co = coroutine.running()
  local t = uv.new_timer()
  t:start(math.max(1, math.floor(s * 1000 + 0.5)), 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

local sig
local function finish()
  local elapsed = now() - t0
  local times = {}
  for i, v in ipairs(acquire) do times[i] = v end
  table.sort(times)
  local p99 = #times > 0 and times[math.max(1, math.ceil(0.99 * #times))] or 0 / 0
  local span = (mode == "w6" and last_release > 0 and last_release or now()) - t0
  write({
    n = N, obtained = st.obtained, failed = st.failed, unfinished = N - st.returned,
    elapsed = elapsed, span = span, held = st.held, p99_ms = p99 * 1000, release_max_ms = st.release_max * 1000,
    mem_lua = st.mem_lua, mem_rss = st.mem_rss, mem_live = st.mem_live, mem_waiting = st.mem_waiting,
  }, failures)
end

local function fail(err)
  local msg = tostring(err):gsub("%d+", "N")
  failures[msg] = (failures[msg] or 0) + 1
  st.failed = st.failed + 1
end

local returned -- below: counts a coroutine that returned, ends the loop after the last
local tenth = math.max(1, N // 10)
local function body(i)
  local key = mode == "w6" and "w6:stampede" or ("w7:%d"):format(i)
  local ta = now()
  local lock, err = locker:obtain(key, TTL, WAIT)
  local tb = now()
  if lock then
    st.obtained = st.obtained + 1
    acquire[#acquire + 1] = tb - ta
    if mode == "w6" then
      if st.obtained == tenth then sample_heap() end
      sleep(HOLD)
    end
    local tr = now()
    st.held = st.held + (tr - tb)
    local ok, rerr = lock:release()
    st.release_max = math.max(st.release_max, now() - tr)
    if mode == "w6" then last_release = math.max(last_release, tr) end
    if not ok then fail("release: " .. tostring(rerr)) end
  else
    fail(err)
  end
  returned()
end

function returned()
  st.returned = st.returned + 1
  if st.returned == N then
    finish()
    sig:close()
    uv.stop()
  end
end

-- the runner's time limit: report what finished, then go
sig = uv.new_signal()
sig:start("sigterm", function()
  finish()
  os.exit(0, false)
end)

-- one obtain + release first, so that the run starts on an open connection
-- as the node peers' does (ioredis connects before their run starts)
local warm = coroutine.create(function()
  local lock = assert(locker:obtain("warm-up", TTL))
  assert(lock:release())
  lua0, rss0, live0 = heap() -- the library loaded, its connection open
  t0 = now()
  for i = 1, N do
    local co = coroutine.create(body)
    local ok, err = coroutine.resume(co, i)
    if not ok then fail("coroutine: " .. tostring(err)) returned() end
  end
  sample_heap() -- every coroutine has started its obtain
end)
assert(coroutine.resume(warm))
uv.run()
-- closing thousands of connections one by one is not part of the run
os.exit(0, false)
