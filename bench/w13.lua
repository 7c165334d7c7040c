-- W1 (uncontended obtain+release pairs) and W3 (handoff: a waiter's
-- obtain after the holder's release, in another process) for a list of
-- pool definitions, one markdown row each; bench/poolkinds.lua and
-- bench/tls.lua run it (dofile) with their own servers.
--   run(side, kinds, label): side, a redis.lua Server for the signals;
--   kinds, { { "row name", pool definition }, ... }; label, the first
--   column's heading.
-- Environment: BENCH_SECONDS (W1 run, default 2), BENCH_HANDOFFS (W3,
-- default 50).  The machine is shared: compare the rows of one run.
local core = require "fluxalock.core"
local R = require "support.redis"

local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 2
local HANDOFFS = tonumber(os.getenv("BENCH_HANDOFFS")) or 50

local function pct(t, p)
  table.sort(t)
  return t[math.max(1, math.ceil(#t * p))]
end

-- the waiter of W3, in its own process: on "go", a waiting obtain; reports
-- the monotonic time it got the lock
local WAITER = [[
local core = require "fluxalock.core"
local fl = require "fluxalock"
local pool = load("return " .. os.getenv("POOL"))()
local locker = fl.locker(pool)
local side = core.pool { host = "127.0.0.1", port = tonumber(os.getenv("SIDE")) }
assert(locker:obtain("warm-waiter", 1)):release() -- connected (and handshaken) before the first go
while true do
  local go = side:call { "BLPOP", "go", "10" }
  if not go or go[2] == "stop" then break end
  local lock = assert(locker:obtain("w3", 5, 5))
  local t = core.now()
  assert(lock:release())
  side:call { "RPUSH", "done", ("%.9f"):format(t) }
end
]]

-- a pool definition as Lua source, for the waiter's environment
local function serialize(v)
  if type(v) ~= "table" then return ("%q"):format(v) end
  local parts = {}
  for k, x in pairs(v) do parts[#parts + 1] = ("[%q]=%s"):format(k, serialize(x)) end
  return "{" .. table.concat(parts, ",") .. "}"
end

return function(side, kinds, label)
  local fl = require "fluxalock"
  local sidep = core.pool { host = "127.0.0.1", port = side.port }
  print(("| %s | W1 pairs/s | W1 p50 µs | W1 p99 µs | W3 median ms | W3 p90 ms |"):format(label))
  print("|---|---:|---:|---:|---:|---:|")
  for _, k in ipairs(kinds) do
    local locker = fl.locker(k[2])
    assert(locker:obtain("warm", 1)):release()
    -- W1
    local samples, n, t0 = {}, 0, core.now()
    while core.now() - t0 < SECONDS do
      n = n + 1
      local a = core.now()
      local lock = assert(locker:obtain("w1:" .. n, 10))
      assert(lock:release())
      samples[n] = (core.now() - a) * 1e6
    end
    local rate = n / (core.now() - t0)
    -- W3
    sidep:call { "DEL", "go", "done" }
    local waiter = R.spawn(WAITER, { POOL = serialize(k[2]), SIDE = side.port })
    local lat = {}
    for i = 1, HANDOFFS do
      local lock = assert(locker:obtain("w3", 5))
      sidep:call { "RPUSH", "go", tostring(i) }
      core.sleep(0.01) -- pacing: the waiter is blocked by now (a benchmark, not a test)
      local tr = core.now()
      assert(lock:release())
      local done = assert(sidep:call { "BLPOP", "done", "10" })
      lat[i] = (tonumber(done[2]) - tr) * 1000
    end
    sidep:call { "RPUSH", "go", "stop" }
    waiter:wait(20)
    print(("| %s | %.0f | %.0f | %.0f | %.3f | %.3f |"):format(k[1], rate, pct(samples, 0.5),
      pct(samples, 0.99), pct(lat, 0.5), pct(lat, 0.9)))
  end
end
