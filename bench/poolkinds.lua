-- Benchmarks of the pool kinds (not tests): W1 (uncontended obtain+release
-- pairs) and W3 (handoff: a waiter's obtain after the holder's release) for
-- one server, a Redis Cluster (3+3), Redlock over 3 and over 5 servers, all
-- on loopback, started here and stopped by PID.
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='./?.so;;' \
--     lua5.4 bench/poolkinds.lua
--
-- Environment: as bench/w13.lua (BENCH_SECONDS, BENCH_HANDOFFS), which
-- runs the workloads.
local R = require "support.redis"
local T = require "support.topology"

local side = R.start()
local single = R.start()
local servers = {}
for i = 1, 5 do servers[i] = R.start() end
local cluster = T.cluster()

local function urls(n)
  local u = {}
  for i = 1, n do u[i] = servers[i].url end
  return u
end
local kinds = {
  { "single", { url = single.url } },
  { "cluster", { cluster = cluster.seeds } },
  { "redlock3", { redlock = urls(3) } },
  { "redlock5", { redlock = urls(5) } },
}

dofile("bench/w13.lua")(side, kinds, "pool")

cluster:stop()
for _, s in ipairs(servers) do s:stop() end
single:stop()
side:stop()
