-- The reference's TTL and refresh scenario: obtain a lock for 5 seconds,
-- watch its time left go down, then extend it by 2 seconds.
--
--   lua5.4 examples/ttl_refresh.lua
--
--   GOT LOCK FOR 5 SECONDS
--   WILL EXPIRE IN 4 SECONDS
--   WILL EXPIRE IN 3 SECONDS
--   WILL EXPIRE IN 5 SECONDS
--
-- Redis: $FLUXALOCK_URL, or redis://127.0.0.1:6379/0 when it is unset.

local fluxalock = require "fluxalock"
local sleep = require("fluxalock.core").sleep -- Lua itself has no sleep

io.stdout:setvbuf("line")

-- lock:ttl() is seconds with millisecond resolution, and it is read a
-- moment after the fact: right after obtaining a 5 s lock it says 4.999.
-- The reference's numbers (5, 4, 3, 5) are whole seconds to the nearest;
-- truncating, as Go's int(ttl.Seconds()) does, would print 4, 3, 2, 4.
local function seconds(ttl) return math.floor(ttl + 0.5) end

local locker = fluxalock.locker()
-- <close>: released on every way out of this chunk (nil is ignored)
local lock <close>, err = locker:obtain("test", 5, 0)
if not lock then -- "not obtained", or why Redis could not be asked
  io.stderr:write("ttl_refresh: ", err, "\n")
  os.exit(1, true)
end

local ttl = assert(lock:ttl())
print(("GOT LOCK FOR %d SECONDS"):format(seconds(ttl)))
sleep(1)
ttl = assert(lock:ttl())
print(("WILL EXPIRE IN %d SECONDS"):format(seconds(ttl)))
sleep(1)
ttl = assert(lock:ttl())
print(("WILL EXPIRE IN %d SECONDS"):format(seconds(ttl)))

-- extend the lock by 2 more seconds: 3 s left becomes 5 s left
local ok, rerr = lock:refresh(2)
if ok == nil then error(rerr, 0) end -- Redis could not be asked
if not ok then
  print("LOST LOCK")
  return
end
ttl = assert(lock:ttl())
print(("WILL EXPIRE IN %d SECONDS"):format(seconds(ttl)))
