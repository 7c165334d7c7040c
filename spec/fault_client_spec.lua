-- A client frozen past its TTL (SIGSTOP of the holder process): another
-- process obtains the lock; the frozen one, resumed, finds out it lost it,
-- never deletes the new holder's lock, and its fence is lower than the new
-- holder's, so a resource that checks fences refuses its late writes.
local R = require "support.redis"

describe("a holder frozen past its ttl", function()
  it("loses the lock to another process and cannot harm the new holder", function()
    local server = R.start()
    finally(function() server:stop() end)
    local go = R.tmpfile()
    os.remove(go)
    finally(function() os.remove(go) end)
    -- the holder: three locks, so that release, refresh and ttl are each the
    -- first call on their lock once it wakes up (each asks Redis itself)
    local holder = R.spawn([[
      local fl = require "fluxalock"
      local core = require "fluxalock.core"
      fl.configure { pools = { default = os.getenv("URL") } }
      local l = fl.locker()
      local a = assert(l:obtain("res-a", 0.5))
      local b = assert(l:obtain("res-b", 0.5))
      local c = assert(l:obtain("res-c", 0.5))
      print("obtained", a:fence(), b:fence(), c:fence())
      io.stdout:flush()
      -- frozen around here by the test; then told to go on
      while not io.open(os.getenv("GO")) do core.sleep(0.01) end
      print("release", tostring(a:release()))
      print("refresh", tostring(b:refresh(5)))
      print("ttl", tostring(c:ttl()))
      print("again", tostring(a:release()), tostring(b:release()), tostring(c:refresh(5)), tostring(c:ttl()))
      print("done")
    ]], { URL = server.url, GO = go })
    finally(function() holder:signal("CONT") holder:signal("KILL") end)
    R.until_true(function() return holder:output():match("obtained") end, 10, "the holder")
    local old = { holder:output():match("obtained\t(%d+)\t(%d+)\t(%d+)") }
    holder:signal("STOP")
    -- its leases run out while it is frozen: the keys vanish from Redis
    R.until_true(function()
      return server:cli("EXISTS", "res-a", "res-b", "res-c") == "0"
    end, 10, "the frozen holder's locks to expire")
    local fl = R.fluxalock(server)
    local locker = fl.locker()
    local new = {}
    for i, k in ipairs { "res-a", "res-b", "res-c" } do
      new[i] = assert(locker:obtain(k, 30), "another process obtains " .. k)
      assert.is_true(new[i]:fence() > tonumber(old[i]),
        "the new holder's fence is higher than the frozen one's")
    end
    local f = assert(io.open(go, "w"))
    f:close()
    holder:signal("CONT")
    local out = holder:wait(20)
    assert.matches("done", out)
    assert.matches("release\tfalse\n", out)
    assert.matches("refresh\tfalse\n", out)
    assert.equal(0, tonumber(out:match("\nttl\t(%S+)\n")))
    local r1, r2, r3, t = out:match("again\t(%S+)\t(%S+)\t(%S+)\t(%S+)\n")
    assert.same({ "false", "false", "false", 0 }, { r1, r2, r3, tonumber(t) })
    -- the new holder's locks are untouched
    for i, k in ipairs { "res-a", "res-b", "res-c" } do
      assert.equal(new[i]:token(), server:cli("GET", k):sub(1, #new[i]:token()))
      local left = assert(new[i]:ttl())
      assert.is_true(left > 25, k .. " was not shortened")
      assert.is_true(new[i]:release())
    end
  end)
end)
