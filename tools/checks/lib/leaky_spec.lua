-- Run only by tools/checks/litter.sh (outside spec/, so never by the
-- suite): a spec file as careless as one can be.  It leaves a
-- redis-server running, temporary files and directories behind, a child
-- killed with SIGKILL after it started a server of its own, a child still
-- running with a process of its own (a sleep), and a failing case; the harness (spec/support/tmp.lua) must still leave nothing once
-- busted ends.
local R = require "support.redis"

describe("a careless spec file", function()
  it("starts a redis-server and never stops it", function()
    assert.truthy(R.start().pid)
  end)

  it("makes a temporary directory and file and never removes them", function()
    local f = assert(io.open(R.tmpdir("careless") .. "/kept", "w"))
    f:write("kept\n")
    f:close()
    assert.truthy(R.tmpfile("careless"))
  end)

  it("has a child start a redis-server, then kills the child", function()
    local p = R.spawn [[
      local R = require "support.redis"
      local s = R.start()
      io.stdout:write("started ", s.pid, "\n") io.stdout:flush()
      while true do R.sleep(1) end
    ]]
    R.until_true(function() return p:output():find("started %d+") end, 20, "the child's redis-server")
    p:signal("KILL")
    R.until_true(function() return not R.alive(p.pid) end, 10, "the child's end")
  end)

  it("leaves a child running, itself waiting for a process of its own", function()
    local p = R.spawn [[
      io.stdout:write("sleeping\n") io.stdout:flush()
      os.execute("sleep 600")
    ]]
    R.until_true(function() return p:output():find("sleeping") end, 20, "the child's sleep")
  end)

  it("fails, so that busted exits through os.exit", function()
    assert.is_true(false, "a failure on purpose")
  end)
end)
