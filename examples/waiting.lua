-- The reference's waiting scenario: A and B, two OS processes, want the
-- same lock, B willing to wait up to 5 seconds.  A gets it and holds it 2
-- seconds; B obtains it right after A releases it (woken by the release,
-- not by polling), then holds it 2 seconds too.
--
--   lua5.4 examples/waiting.lua
--
--   GETTING LOCK A
--   GETTING LOCK B
--   GOT LOCK A
--   RELEASING LOCK A
--   GOT LOCK B
--   RELEASING LOCK B
--
-- Redis: $FLUXALOCK_URL, or redis://127.0.0.1:6379/0 when it is unset.
--
-- The script starts itself twice, as process A and process B.  So that A
-- asks first, each process marks the points it reaches with a file in a
-- private directory, and waits at some points for the other one's mark (the
-- table AFTER; examples/contenders.lua runs the two processes).  B starts
-- its wait once A holds the lock; from there on the order is the lock's own doing: B's obtain returns only after A released.

-- the plumbing module sits beside this script
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local fluxalock = require "fluxalock"
local contenders = require "contenders"
local sleep = require("fluxalock.core").sleep

io.stdout:setvbuf("line") -- A and B share the terminal: no buffered lines

-- at each point a process marks it, then waits for the other's mark named
-- here (none: it goes on)
local AFTER = {
  A = { getting = "B getting" },
  B = { start = "A getting", getting = "A got" },
}

local function testLock(name, point)
  point(name, "start")
  print("GETTING LOCK " .. name)
  point(name, "getting")
  -- <close>: released on every way out of this function (nil is ignored)
  local lock <close>, err = fluxalock.locker():obtain("test_lock", 60, 5)
  if err and err ~= fluxalock.NOT_OBTAINED then error(err, 0) end
  if not lock then
    print("TIMED OUT WAITING FOR LOCK " .. name)
    return
  end
  print("GOT LOCK " .. name)
  point(name, "got")
  sleep(2)
  print("RELEASING LOCK " .. name)
end

contenders.run(AFTER, testLock)
