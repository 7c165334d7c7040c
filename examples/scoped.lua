-- A lock scoped by a to-be-closed variable: whatever way the scope is left,
-- including an error, the lock is released, and the error that propagates
-- is the job's own.
--
--   lua5.4 examples/scoped.lua
--
--   GOT LOCK scoped_job
--   JOB FAILED: the job went wrong
--   fluxalock.Lock: scoped_job (released)
--   LOCK IS FREE AGAIN
--
-- Redis: $FLUXALOCK_URL, or redis://127.0.0.1:6379/0 when it is unset.

local fluxalock = require "fluxalock"

io.stdout:setvbuf("line")

local locker = fluxalock.locker()
local seen -- the lock, kept to look at it after its scope is gone

local function job()
  -- wait up to 5 s; assert turns "not obtained" (or a Redis failure) into
  -- an error of this function
  local lock <close> = assert(locker:obtain("scoped_job", 60, 5))
  seen = lock
  print("GOT LOCK " .. lock:key())
  error("the job went wrong", 0) -- or any other error: a failed assert, ...
end

local ok, err = pcall(job)
assert(not ok)
if not seen then -- the lock was never obtained: say why
  io.stderr:write("scoped: ", err, "\n")
  os.exit(1, true)
end
print("JOB FAILED: " .. err) -- the job's error, not the release's
print(tostring(seen))        -- released by <close> on the way out

-- another holder can have it now, at once (no wait)
local again, why = locker:obtain("scoped_job", 60)
if not again then -- "not obtained" (someone else took it), or a failure
  io.stderr:write("scoped: ", why, "\n")
  os.exit(1, true)
end
print("LOCK IS FREE AGAIN")
again:release()
