-- The test command's own promise about processes (tools/test.sh): when a
-- job ends, what it recorded and still runs is stopped by its PID, and
-- nothing else is.  A recorded number can belong to another process by
-- then: pids wrap at 32768 here within a minute of a busy run, and a job's
-- list is read minutes after its first entries, and SIGTERM went to
-- whatever had the number then.
local R = require "support.redis"

local root = R.sh("pwd"):gsub("%s+$", "")
local LAST_PID = "/proc/sys/kernel/ns_last_pid"

describe("tools/test.sh", function()
  -- the kernel gives the next new process the pid after the number in
  -- LAST_PID (root only): that is how a recorded pid is made another's here
  local f = io.open(LAST_PID, "w")
  if not f then
    it("test machine: a writable " .. LAST_PID, function()
      error("test machine: the case below needs root (it sets " .. LAST_PID .. ")", 0)
    end)
    return
  end
  f:close()

  it("a job's end stops the processes it recorded, not one that took over a recorded pid", function()
    local dir = R.tmpdir("job")
    local out = dir .. "/pids"
    -- the job: it records x and z (spec/support/tmp.lua, as a spec does),
    -- x ends, and a process of nobody's is given x's number.  z and that
    -- process run without the job's TMPDIR: only the job's PID list can
    -- stop them, not its sweep for leftovers (tools/checks/lib/leftover.sh)
    local job = dir .. "/job.sh"
    R.write(job, ([=[
sleep 60 & x=$!
env -u TMPDIR sleep 60 & z=$!
LUA_PATH=%s lua5.4 -e "local Tmp = require 'support.tmp'
  Tmp.track($x) Tmp.track($z)
  os.execute('rm -rf ' .. Tmp.root()) os.exit(0, false) -- leaves z to the list"
kill $x; wait $x
y=
for try in $(seq 1 200); do
  echo $((x - 1)) >%s || break
  env -u TMPDIR -u FLUXALOCK_TEST_PIDS sleep 60 & y=$!
  [ "$y" = "$x" ] && break
  kill $y; wait $y; y=
done
echo "$y $z" >%s
]=]):format(R.quote(root .. "/spec/?.lua;;"), LAST_PID, R.quote(out)))
    R.sh(("TMPDIR=%s sh tools/test.sh --job %s %s %s >/dev/null 2>&1")
      :format(R.quote(dir), R.quote(job), R.quote(dir .. "/results"), R.quote(dir .. "/lock")))
    local y, z = (R.read(out) or ""):match("^(%d*) (%d+)\n$")
    assert.truthy(z, "the job did not run to its end")
    if y ~= "" then R.track(y) end -- stopped when this spec ends
    assert.are_not.equal("", y, "the kernel did not give x's pid to a new process in 200 tries")
    assert.matches(" 1 0 ", R.read(dir .. "/results"))
    assert.is_true(R.alive(y), "the job's end stopped process " .. y
      .. ", which took over the pid of a process the job had recorded")
    R.until_true(function() return not R.alive(z) end, 10, "the job's end to stop the recorded process z")
  end)
end)
