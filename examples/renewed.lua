-- A lock kept alive while a job runs longer than its ttl: with
-- { renew = true } the core's renewal thread refreshes it every ttl/3, even
-- while this script is blocked in os.execute.  held() says whether the
-- renewal still vouches for it; a crashed script stops renewing, and then
-- the lock expires by its short ttl instead of blocking everyone for long.
--
--   lua5.4 examples/renewed.lua
--
--   GOT LOCK renewed_job FOR 1 SECOND, RENEWED
--   WORKED 2.5 SECONDS, STILL HELD: true
--   RELEASED
--
-- Redis: $FLUXALOCK_URL, or redis://127.0.0.1:6379/0 when it is unset.

local fluxalock = require "fluxalock"

io.stdout:setvbuf("line")

local lock, err = fluxalock.locker():obtain("renewed_job", 1, 0, { renew = true })
if not lock then
  io.stderr:write("renewed: ", err, "\n")
  os.exit(1, true)
end
print("GOT LOCK renewed_job FOR 1 SECOND, RENEWED")

os.execute("sleep 2.5") -- the job: longer than the ttl, and Lua is not running

-- a job that runs in steps would check lock:held() between them, and stop
-- when it turns false (the lock was taken over, or renewal failed for
-- longer than the ttl)
print("WORKED 2.5 SECONDS, STILL HELD: " .. tostring(lock:held()))
assert(lock:release())
print("RELEASED")
