-- The preamble every child program of R.child shares, run in the child
-- process: fluxalock configured from the environment, a witness connection
-- for counters, and timed events on stdout.
--   URL      the default pool's URL
--   URLS     space-separated node URLs: the default pool is a Redlock pool
--   SEEDS    space-separated "host:port" seeds: the default pool is a Cluster
--   TIMEOUT  the default pool's timeout and connect_timeout (seconds)
--   RETRY    the default pool's retry_step and retry_max (seconds)
--   WITNESS  the port of a witness redis-server on 127.0.0.1: C.witness, a
--            connection of its own (core.pool), not the lock's
-- With none of URL, URLS, SEEDS, nothing is configured (FLUXALOCK_URL or
-- the default applies).
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"

local C = { fluxalock = fluxalock, core = core }

io.stdout:setvbuf("no")

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local pool
if os.getenv("URLS") then
  pool = { redlock = words(os.getenv("URLS")) }
elseif os.getenv("SEEDS") then
  C.seeds = words(os.getenv("SEEDS"))
  pool = { cluster = C.seeds }
elseif os.getenv("URL") then
  pool = { url = os.getenv("URL") }
end
if pool then
  local t = tonumber(os.getenv("TIMEOUT"))
  if t then pool.timeout, pool.connect_timeout = t, t end
  local r = tonumber(os.getenv("RETRY"))
  if r then pool.retry_step, pool.retry_max = r, r end
  fluxalock.configure { pools = { default = pool } }
end
C.locker = fluxalock.locker()

if os.getenv("WITNESS") then
  C.witness = core.pool { host = "127.0.0.1", port = tonumber(os.getenv("WITNESS")) }
end

-- "NAME <monotonic seconds> detail": CLOCK_MONOTONIC is one clock for every
-- process of the machine, so the events of two children can be put in order
function C.event(name, detail)
  io.write(("%s %.6f %s\n"):format(name, core.now(), tostring(detail or "")))
end

return C
