-- Process plumbing shared by the two-contender examples (non_blocking.lua,
-- waiting.lua): run a scenario's A and B as two OS processes, ordered by
-- marker files rather than sleeps.
--
--   contenders.run(AFTER, body)
--
-- The example script starts itself twice, as process A and process B (with
-- the same interpreter and options it was started with), and each runs
-- body(name, point).  point(name, what) marks that the process reached
-- `what`, then waits for the other process's mark AFTER[name][what] (if
-- any).  That orders the steps; who gets the lock is Redis's doing alone.

local core = require "fluxalock.core" -- for sleep and a monotonic clock

local M = {}

local function quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

function M.run(after, body)
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

  local function point(name, what)
    mark(name .. " " .. what)
    local other = after[name][what]
    if not other then return end
    local deadline = core.now() + 30
    while not marked(other) do -- the other process's file is the signal
      if marked("failed") then os.exit(1, true) end -- it said why; true: close the lock
      if core.now() > deadline then error("no sign of '" .. other .. "' after 30 s", 0) end
      core.sleep(0.002)
    end
  end

  if role then -- one of the contenders
    local ok, err = pcall(body, role, point)
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
end

return M
