-- Mutual-exclusion soak: many real processes take one lock thousands of
-- times while Redis is killed (SIGKILL) and stopped (SIGTERM) and started
-- again, its data kept (appendonly, fsync always).  Every holder appends
-- "B <fence> <pid>" after obtaining and "E <fence> <pid>" before releasing to
-- one O_APPEND log; the log must show no two critical sections overlapping,
-- and fences strictly increasing from one holder to the next.
-- FLUXALOCK_SOAK_SECONDS (default 20) bounds the run.
local R = require "support.redis"

local SECONDS = tonumber(os.getenv("FLUXALOCK_SOAK_SECONDS")) or 20
local WORKERS = 6

-- (R.child: locker on URL, timeouts 0.5 s)
local WORKER = [[
  local log = assert(io.open(os.getenv("LOG"), "a"))
  local pid = assert(io.open("/proc/self/stat")):read("a"):match("^(%d+)")
  local stop = core.now() + tonumber(os.getenv("SECONDS"))
  local acq, errs = 0, 0
  while core.now() < stop do
    local lock, err = locker:obtain("soak", 3, 2)
    if lock then
      log:write(("B %d %s\n"):format(lock:fence(), pid)) log:flush()
      core.sleep(0.0005) -- the critical section
      log:write(("E %d %s\n"):format(lock:fence(), pid)) log:flush()
      acq = acq + 1
      -- a release that failed (Redis down) is tried again; false means the
      -- lease ran out meanwhile, which the log would show as an overlap
      local r = lock:release()
      while r == nil and core.now() < stop + 5 do
        core.sleep(0.02)
        r = lock:release()
      end
    elseif err ~= "not obtained" then
      errs = errs + 1
      core.sleep(0.02) -- Redis is down: do not spin
    end
  end
  print(("done %d %d"):format(acq, errs))
]]

describe("mutual exclusion under Redis restarts", function()
  it("shows zero overlaps over thousands of acquisitions by " .. WORKERS .. " processes", function()
    local server = R.start { persist = true }
    finally(function() server:stop() end)
    local log = R.tmpfile()
    finally(function() os.remove(log) end)
    local procs = {}
    for i = 1, WORKERS do
      procs[i] = R.child(WORKER, { URL = server.url, TIMEOUT = 0.5, LOG = log, SECONDS = SECONDS })
    end
    finally(function() for _, p in ipairs(procs) do p:signal("KILL") end end)
    local function acquisitions()
      local f = io.open(log)
      if not f then return 0 end
      local n = 0
      for line in f:lines() do if line:sub(1, 1) == "E" then n = n + 1 end end
      f:close()
      return n
    end
    local function running()
      for _, p in ipairs(procs) do if R.alive(p.pid) then return true end end
      return false
    end
    local restarts, seen = 0, 0
    local deadline = R.now() + SECONDS - 2
    while R.now() < deadline do
      -- restart once the workers made real progress since the last one
      local ok = pcall(R.until_true, function()
        return acquisitions() >= seen + 150 or R.now() >= deadline
      end, SECONDS, "progress")
      if not ok or R.now() >= deadline then break end
      if restarts % 2 == 0 then
        server:kill()
        server:refusing()
      end
      server:restart()
      restarts = restarts + 1
      seen = acquisitions()
    end
    local acq, errs = 0, 0
    for _, p in ipairs(procs) do
      local out = p:wait(SECONDS + 30)
      local a, e = out:match("done (%d+) (%d+)")
      assert.is_not_nil(a, "worker output: " .. out)
      acq, errs = acq + tonumber(a), errs + tonumber(e)
    end
    assert.is_false(running())
    -- the log, in the order the writes happened
    local holder, last_fence, overlaps, entries = nil, 0, 0, 0
    local fence_drops = 0
    for line in io.lines(log) do
      local kind, fence, pid = line:match("^([BE]) (%d+) (%d+)$")
      assert.is_not_nil(kind, "log line: " .. line)
      fence = tonumber(fence)
      if kind == "B" then
        entries = entries + 1
        if holder then overlaps = overlaps + 1 end
        if fence <= last_fence then fence_drops = fence_drops + 1 end
        holder, last_fence = pid .. ":" .. fence, fence
      else
        if holder ~= pid .. ":" .. fence then overlaps = overlaps + 1 end
        holder = nil
      end
    end
    print(("\nsoak: %d processes, %d s, %d acquisitions, %d Redis restarts, %d failed calls, %d overlaps"):format(
      WORKERS, SECONDS, entries, restarts, errs, overlaps))
    assert.equal(acq, entries)
    assert.equal(0, overlaps)
    assert.equal(0, fence_drops)
    assert.is_true(restarts >= 2, "restarts were injected")
    -- thousands in the default 20 s; a shortened run (the ASan check) at
    -- least 25 a second
    local min = SECONDS >= 20 and 1000 or 25 * SECONDS
    assert.is_true(entries >= min, ("at least %d acquisitions: %d"):format(min, entries))
  end)
end)
