-- A pool found through Redis Sentinel: a master, a replica and 3 sentinels,
-- all real processes; the master is killed and the same locker carries on
-- on the promoted replica.
local R = require "support.redis"
local T = require "support.topology"

describe("a sentinel pool", function()
  local master, replica, sentinels, fluxalock, locker
  local NAME = "flmaster"

  local function role(s) return (s:cli("ROLE"):match("^(%a+)")) end

  T.setup_sentinel(NAME, function(addrs) return {
    default = { sentinels = addrs, master = NAME, timeout = 0.5, connect_timeout = 0.5 },
    nowhere = { sentinels = { "127.0.0.1:1", "127.0.0.1:2" }, master = NAME, connect_timeout = 0.2 },
    second = { sentinels = addrs, master = NAME, timeout = 0.5, connect_timeout = 0.5 },
  } end, function(e)
    master, replica, sentinels, fluxalock = e.master, e.replica, e.sentinels, e.fluxalock
    locker = fluxalock.locker()
  end)

  it("never connects in locker(), and says which sentinels failed", function()
    local l = fluxalock.locker("nowhere")
    local lock, err = l:obtain("x", 1)
    assert.is_nil(lock)
    assert.matches("^fluxalock: sentinel master 'flmaster': not found %(", err)
    assert.matches("127.0.0.1:1", err, 1, true)
    assert.matches("127.0.0.1:2", err, 1, true)
    assert.equal("fluxalock.Locker: nowhere (sentinel:flmaster)", tostring(l))
  end)

  it("locks on the master the sentinels name", function()
    local lock = assert(locker:obtain("s-basic", 5))
    assert.equal("fluxalock.Lock", getmetatable(lock).__name)
    assert.equal("1", master:cli("EXISTS", "s-basic"))
    assert.is_nil(locker:obtain("s-basic", 5))
    assert.is_true(lock:refresh(1))
    assert.is_true(lock:ttl() > 5)
    assert.is_true(lock:release())
    assert.equal("0", master:cli("EXISTS", "s-basic"))
  end)

  -- both servers in sync, and every sentinel agreeing on 'm' as the master
  -- with no failover under way
  local function settled(m, r)
    R.until_true(function()
      if not r:cli("INFO", "replication"):find("master_link_status:up", 1, true) then return false end
      for _, s in ipairs(sentinels) do
        if not s:cli("SENTINEL", "get-master-addr-by-name", NAME):find(tostring(m.port), 1, true)
          or s:cli("SENTINEL", "master", NAME):find("failover_in_progress", 1, true)
          or not s:cli("SENTINEL", "replicas", NAME):find(tostring(r.port), 1, true) then
          return false
        end
      end
      return true
    end, 20, "sentinels to settle")
  end

  it("notices that its server became a replica (READONLY) and finds the new master", function()
    settled(master, replica)
    local held = assert(locker:obtain("s-held", 30))
    R.until_true(function() return replica:cli("EXISTS", "s-held") == "1" end, 5, "replication")
    -- a manual failover: the master is demoted, the locker still points there
    assert.equal("OK", sentinels[1]:cli("SENTINEL", "failover", NAME))
    R.until_true(function() return role(replica) == "master" end, 15, "failover")
    -- (the sentinels would demote the old master at their next look, up to
    -- 10 s away: do it now, as they would)
    master:cli("REPLICAOF", "127.0.0.1", tostring(replica.port))
    -- until the sentinels switch over too, the locker can only say where it
    -- failed; then it finds the new master by itself
    local lock, err, errs = nil, nil, {}
    R.until_true(function()
      lock, err = locker:obtain("s-back", 5)
      if not lock then errs[#errs + 1] = err end
      return lock ~= nil
    end, 10, "a lock on the new master")
    for _, e in ipairs(errs) do assert.matches("^fluxalock: ", e) end
    assert.equal("1", replica:cli("EXISTS", "s-back"))
    assert.is_true(lock:release())
    -- the lock from before the failover follows the pool to the new master:
    -- it was replicated there, so it is still this holder's
    assert.is_true(held:refresh(1))
    assert.is_true(held:release())
  end)

  it("follows a failover after its master is killed, no call hanging meanwhile", function()
    local old, new = replica, master -- roles after the previous test
    settled(old, new)
    local kept = assert(locker:obtain("s-kept", 30))
    R.until_true(function() return new:cli("EXISTS", "s-kept") == "1" end, 5, "replication")
    old:kill() -- SIGKILL, by PID
    -- (another locker of the same sentinels goes through the failover: the
    -- first one is left alone, for its lock to find the new master itself)
    local second = fluxalock.locker("second")
    local t0, slowest = R.now(), 0
    local lock, err
    repeat
      local c0 = R.now()
      lock, err = second:obtain("s-after", 5)
      slowest = math.max(slowest, R.now() - c0)
      if not lock then
        -- until the promotion the old address refuses: a clear runtime error
        assert.matches("^fluxalock: ", err)
        R.sleep(0.05)
      end
    until lock or R.now() - t0 > 20
    assert.is_truthy(lock, "no lock within 20 s of the kill: " .. tostring(err))
    -- each call is bounded by the timeouts (0.5 s; 3 sentinels, 2 tries)
    assert.is_true(slowest < 4, "a call took " .. slowest .. " s")
    assert.equal("master", role(new))
    assert.equal("1", new:cli("EXISTS", "s-after"))
    assert.is_true(lock:release())
    -- the lock obtained before: its own call finds the new master (through
    -- the sentinels, ROLE checked) without any call on its locker
    local left, terr = kept:ttl()
    assert.is_truthy(left, terr)
    assert.is_true(left > 0)
    assert.is_true(kept:refresh(1))
    assert.is_true(kept:release())
    assert.equal("0", new:cli("EXISTS", "s-kept"))
  end)
end)
