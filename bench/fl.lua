-- The fluxalock driver of the benchmarks (see bench/run.lua).
--
--   lua5.4 bench/fl.lua MODE PORT OUT START END KEY ROUNDS
--
-- The same modes and output as bench/floor.c (w1, w2, w3a, w3b), plus w5
-- (memory).  START/END are CLOCK_MONOTONIC seconds (core.now() reads the
-- same clock as the C floor and python's time.monotonic()).

local fluxalock = require "fluxalock"
local core = require "fluxalock.core"

local mode, port, out, start, stop, key, rounds = ...
port, start, stop, rounds = tonumber(port), tonumber(start), tonumber(stop), tonumber(rounds)
local now = core.now

fluxalock.configure { pools = { default = { host = "127.0.0.1", port = port } } }
local locker = fluxalock.locker()
-- commands on the side (holders counter, handoff coordination) go through a
-- connection of their own, so the lock's connection carries lock traffic only
local side = core.pool { host = "127.0.0.1", port = port }

local function call(...)
  local r, err = side:call { ... }
  if r == nil then error(err) end
  return r
end

local function sleep_until(t)
  local d = t - now()
  if d > 0 then core.sleep(d) end
end

local samples, n, total, violations = {}, 0, 0, 0

local function write(elapsed)
  local f = assert(io.open(out, "w"))
  f:write(("count=%d total=%d elapsed=%.6f violations=%d\n"):format(n, total, elapsed, violations))
  for i = 1, n do f:write(("%.6f\n"):format(samples[i])) end
  f:close()
end

local function statm_rss()
  local f = assert(io.open("/proc/self/statm"))
  local _, res = f:read("n", "n")
  f:close()
  return res * 4096 -- pages (the kernel's page size on x86-64 and arm64 Linux)
end

if mode == "w1" then
  sleep_until(start)
  local i = 0
  while true do
    local t0 = now()
    if t0 >= stop then break end
    i = i + 1
    local lock = locker:obtain(key .. ":" .. i, 10, 0)
    if not lock then error("w1: not obtained") end
    assert(lock:release())
    local t1 = now()
    total = total + 1
    if t1 < stop then
      n = n + 1
      samples[n] = (t1 - t0) * 1e6
    end
  end
  write(stop - start)
elseif mode == "w2" then
  sleep_until(start)
  while true do
    local t0 = now()
    if t0 >= stop then break end
    local lock, err = locker:obtain(key, 10, 5)
    if not lock then error("w2: " .. tostring(err)) end
    local t1 = now()
    if call("INCR", "bench:holders") ~= 1 then violations = violations + 1 end
    call("DECR", "bench:holders")
    assert(lock:release())
    total = total + 1
    if t1 < stop then
      n = n + 1
      samples[n] = (t1 - t0) * 1e6
    end
  end
  write(stop - start)
elseif mode == "w3a" or mode == "w3b" then
  local ready, go = key .. ":ready", key .. ":go"
  for i = 0, rounds - 1 do
    if mode == "w3a" then -- the holder
      call("BLPOP", ready, "10")
      local lock = assert(locker:obtain(key, 10, 1))
      call("RPUSH", go, "1")
      core.sleep((20 + (i * 7919) % 101) / 1000) -- 20..120 ms
      local t = now()
      assert(lock:release())
      n = n + 1
      samples[n] = t
    else -- the waiter
      call("RPUSH", ready, "1")
      call("BLPOP", go, "10")
      local lock = assert(locker:obtain(key, 10, 5))
      n = n + 1
      samples[n] = now()
      assert(lock:release())
    end
    total = total + 1
  end
  write(0)
elseif mode == "w5" then
  -- bytes per held lock: 10,000 locks held at once in this Lua state
  local N = 10000
  locker:obtain(key .. ":warm", 60, 0):release() -- connect, load scripts
  -- the table that holds them is the benchmark's: sized before measuring
  local held = {}
  for i = 1, N do held[i] = false end
  collectgarbage("collect")
  collectgarbage("collect")
  local kb0, rss0 = collectgarbage("count"), statm_rss()
  for i = 1, N do
    held[i] = assert(locker:obtain(("%s:held:%05d"):format(key, i), 60, 0))
  end
  collectgarbage("collect")
  collectgarbage("collect")
  local kb1, rss1 = collectgarbage("count"), statm_rss()
  for i = 1, N do held[i]:release() end
  held = nil -- luacheck: ignore 311
  collectgarbage("collect")
  collectgarbage("collect")
  -- 1,000,000 obtain/release cycles on distinct keys
  local cycles = rounds
  local rss_a = statm_rss()
  local kb_a = collectgarbage("count")
  for i = 1, cycles do
    local lock = locker:obtain(key .. ":c:" .. i, 10, 0)
    if not lock then error("w5: not obtained") end
    lock:release()
  end
  collectgarbage("collect")
  collectgarbage("collect")
  local rss_b = statm_rss()
  local kb_b = collectgarbage("count")
  local f = assert(io.open(out, "w"))
  f:write(("held=%d lua_bytes_per_lock=%.1f rss_bytes_per_lock=%.1f key_bytes=%d "
    .. "cycles=%d rss_before=%d rss_after=%d lua_kb_before=%.1f lua_kb_after=%.1f\n"):format(
    N, (kb1 - kb0) * 1024 / N, (rss1 - rss0) / N, #(key .. ":held:00000"),
    cycles, rss_a, rss_b, kb_a, kb_b))
  f:close()
else
  error("unknown mode " .. tostring(mode))
end
