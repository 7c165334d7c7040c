-- wrk script of W10 (bench/w10.lua): its threads take the ports of
-- W10_PORTS in turn (thread 1 the first service, thread 2 the second, ...),
-- each sends GET /item/k0 .. k<W10_KEYS - 1> round the keys, and done()
-- prints one line for bench/w10.lua:
--   W10 requests=N duration_us=N p50_us=N p99_us=N errors=N non2xx=N
-- luacheck: globals setup request done wrk first
local ports, keys = {}, tonumber(os.getenv("W10_KEYS")) or 20
for p in (os.getenv("W10_PORTS") or ""):gmatch("%d+") do ports[#ports + 1] = p end
local threads, made = {}, 0

function setup(thread)
  made = made + 1
  local port = ports[(made - 1) % #ports + 1]
  thread.addr = wrk.lookup("127.0.0.1", port)[1]
  thread:set("first", made * 7)
  threads[#threads + 1] = thread
end

local n
function request()
  n = (n or first or 0) + 1
  return wrk.format("GET", "/item/k" .. (n % keys))
end

function done(summary, latency)
  local e = summary.errors
  io.write(("W10 requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n"):format(
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
