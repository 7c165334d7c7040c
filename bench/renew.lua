-- Benchmark of renewed locks (not a test): what 100 renewed locks held in
-- one process cost Redis (refresh requests per second, from the server's
-- own INFO commandstats) against the bound 3 x 100 / ttl, and W1
-- (uncontended obtain+release pairs) with and without them.
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='./?.so;;' \
--     lua5.4 bench/renew.lua
--
-- Environment: BENCH_SECONDS (each W1 run and the request count window,
-- default 5).  The machine is shared: compare the rows of one run.
local R = require "support.redis"

local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 5
local N, TTL = 100, 3

local server = R.start()
local fl = R.fluxalock(server)
local locker = fl.locker()

-- refresh script calls so far (EVALSHA, and EVAL after a NOSCRIPT)
local function refreshes()
  local info, n = server:cli("INFO", "commandstats"), 0
  for calls in info:gmatch("cmdstat_eval[sha_]*:calls=(%d+)") do n = n + tonumber(calls) end
  return n
end

local function w1(tag)
  local count, t0, i = 0, R.now(), 0
  while R.now() - t0 < SECONDS do
    i = i + 1
    local lock = assert(locker:obtain(tag .. i, 10))
    assert(lock:release())
    count = count + 1
  end
  return count / (R.now() - t0)
end

w1("warm:") -- connections, script cache, CPU frequency
local function hold()
  local locks = {}
  for i = 1, N do locks[i] = assert(locker:obtain("renewed:" .. i, TTL, 0, { renew = true })) end
  return locks
end
local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end
-- W1 alone and beside the renewed locks, alternating (3 rounds each, the
-- medians compared): the machine's noise hits both alike
local alone, beside = {}, {}
for r = 1, 3 do
  alone[r] = w1("alone" .. r .. ":")
  local locks = hold()
  beside[r] = w1("beside" .. r .. ":")
  for _, l in ipairs(locks) do l:release() end
end
local plain, with = median(alone), median(beside)
local locks = hold()
R.sleep(1.5) -- half way between two renewals: the window holds whole intervals
local c0, t0 = refreshes(), R.now()
R.sleep(SECONDS)
local rate = (refreshes() - c0) / (R.now() - t0)
local held = 0
for _, l in ipairs(locks) do
  if l:held() then held = held + 1 end
  l:release()
end
server:stop()

local bound = 3 * N / TTL
print("| measure | value | target | verdict |")
print("|---|---|---|---|")
print(("| refresh requests/s, %d renewed locks, ttl %d s | %.1f | ≤ 3 × %d / %d = %.0f | %s |"):format(
  N, TTL, rate, N, TTL, bound, rate <= bound and "ok" or "MISSED"))
print(("| renewed locks still held at the end | %d of %d | all | %s |"):format(held, N, held == N and "ok" or "MISSED"))
print(("| W1 pairs/s alone (median of 3) | %.0f | | |"):format(plain))
print(("| W1 pairs/s beside %d renewed locks (median of 3) | %.0f (%.0f %%) | unchanged (noise: a few %%) | |"):format(
  N, with, 100 * with / plain))
