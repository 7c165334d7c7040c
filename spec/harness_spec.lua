-- The harness's own promises, checked from outside.  Its random choices
-- (ports, DNS server addresses) are its own per process.  And when a job
-- of the test command (tools/test.sh) ends, what the job recorded and
-- still runs is stopped by its PID, and nothing else is: pids wrap at
-- 32768 here every few minutes of a busy run, and a job's list is read
-- minutes after its first entries, when a number may be another's.
local R = require "support.redis"

local root = R.sh("pwd"):gsub("%s+$", "")
local LAST_PID = "/proc/sys/kernel/ns_last_pid"

describe("the harness's random choices", function()
  -- two suites side by side ran their valgrind reruns in step: Lua seeds
  -- from the time in seconds and an address, valgrind lays memory out the
  -- same every time, and two spec processes drew the same DNS server
  -- address (a port is claimed machine-wide, an address is not)
  it("differ between two spec processes started in one second with memory laid out the same", function()
    -- setarch -R: no address space randomisation, as under valgrind
    local cmd = ("cd %s && LUA_PATH='spec/?.lua;lua/?.lua;;' LUA_CPATH='./?.so;;' setarch -R lua5.4 -e %s")
      :format(R.quote(root), R.quote('require "support.redis" io.write(os.time(), " ", math.random(1, 1e9), "\\n")'))
    local sa, a, sb, b
    for _ = 1, 5 do -- until both start within one second
      local out = R.sh(("%s & %s & wait"):format(cmd, cmd)) -- a line each, one write
      sa, a, sb, b = out:match("^(%d+) (%d+)\n(%d+) (%d+)\n$")
      assert.truthy(sa, out)
      if sa == sb then break end
    end
    -- (the numbers alone: lines of two seconds would differ anyway)
    assert.are.equal(sa, sb, "no two starts within one second in 5 tries")
    assert.are_not.equal(a, b)
  end)

  it("a DNS server's address that another one holds is not used: the next server gets another", function()
    local T = require "support.tls"
    local socket = require "socket"
    -- the address T.dns draws first, held by a socket of ours
    math.randomseed(42)
    local taken = ("127.53.%d.%d"):format(math.random(0, 255), math.random(1, 254))
    local squat = assert(socket.udp())
    assert(squat:setsockname(taken, 53))
    math.randomseed(42)
    local dns = T.dns("answer")
    finally(function() dns:stop() squat:close() end)
    assert.are_not.equal(taken, dns.ip)
    -- and the server there answers: an A query for "x." gets 127.0.0.1
    local u = assert(socket.udp())
    assert(u:setpeername(dns.ip, 53))
    u:settimeout(10)
    assert(u:send("\0\7\1\0\0\1\0\0\0\0\0\0\1x\0\0\1\0\1"))
    local reply = u:receive()
    u:close()
    assert.truthy(reply and reply:find("\127\0\0\1$"), "no answer from " .. dns.ip)
  end)
end)

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
    -- the job's line: passed, and its seconds (once read after the list
    -- had overwritten the job's start: 1796636079 s)
    local secs = (R.read(dir .. "/results") or ""):match("^%S+ 1 0 (%d+) %d+\n$")
    assert.truthy(secs, R.read(dir .. "/results"))
    assert.is_true(tonumber(secs) < 600, secs .. " s")
    assert.is_true(R.alive(y), "the job's end stopped process " .. y
      .. ", which took over the pid of a process the job had recorded")
    R.until_true(function() return not R.alive(z) end, 10, "the job's end to stop the recorded process z")
  end)
end)
