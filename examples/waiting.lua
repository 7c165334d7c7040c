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
-- table AFTER).  B starts its wait once A holds the lock; from there on the
-- order is the lock's own doing: B's obtain returns only after A released.

local fluxalock = require "fluxalock"
local core = require "fluxalock.core" -- for sleep and a monotonic clock
local sleep = core.sleep

io.stdout:setvbuf("line") -- A and B share the terminal: no buffered lines

-- at each point a process marks it, then waits for the other's mark named
-- here (none: it goes on)
local AFTER = {
  A = { getting = "B getting" },
  B = { start = "A getting", getting = "A got" },
}
local point -- point(name, what): defined below, with the process plumbing

local function testLock(name)
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

-- ---- process plumbing: run A and B as two processes -----------------------

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local role, dir = arg[1], arg[2]

local function file(what) return dir .. "/" .. what:gsub(" ", "-") end

local function mark(what) -- written whole, then renamed: never seen half-made
  local f = assert(io.open(file(what) .. ".tmp", "w"))
  f:close()
  assert(os.rename(file(what) .. ".tmp", file(what)))
end

local function marked(what)
  local f = io.open(file(what))
  if f then f:close() end
  return f ~= nil
end

function point(name, what)
  mark(name .. " " .. what)
  local other = AFTER[name][what]
  if not other then return end
  local deadline = core.now() + 30
  while not marked(other) do -- the other process's file is the signal
    if marked("failed") then os.exit(1, true) end -- it said why; true: close the lock
    if core.now() > deadline then error("no sign of '" .. other .. "' after 30 s", 0) end
    sleep(0.002)
  end
end

if role then -- one of the contenders
  local ok, err = pcall(testLock, role)
  if not ok then
    io.stderr:write(role, ": ", tostring(err), "\n")
    mark("failed")
    os.exit(1, true)
  end
  os.exit(0, true)
end

-- the parent: the command line that ran this script (interpreter, its
-- options, the script), run once per contender, both at the same time
local first = 0
while arg[first - 1] do first = first - 1 end
local self = {}
for i = first, 0 do self[#self + 1] = quote(arg[i]) end
self = table.concat(self, " ")
local tmp = io.popen("mktemp -d \"${TMPDIR:-/tmp}/fluxalock-example.XXXXXX\"")
dir = tmp:read("l")
tmp:close()
assert(dir and dir ~= "", "mktemp -d failed")
local ok = os.execute(("%s A %s & a=$!; %s B %s & b=$!; wait $a; ra=$?; wait $b; rb=$?; "
  .. "rm -rf %s; [ $ra -eq 0 ] && [ $rb -eq 0 ]"):format(self, quote(dir), self, quote(dir), quote(dir)))
os.exit(ok and 0 or 1, true) -- true: close the state, free everything
