-- 'replicas' applies to renewals on every pool kind (replicas_spec.lua has
-- the single server): a renewal that too few replicas acknowledged counts
-- as failed, retried until the lock's local deadline, then the lock is
-- lost.  Real masters and replicas; a replica is stopped by its PID.
local R = require "support.redis"
local T = require "support.topology"

local pair = R.pair

-- obtain 'key' renewed on locker l, see it renewed past its ttl, stop
-- 'replica' and see the lock found lost, and its on_lost told once;
-- 'master' keeps the key (the unacknowledged renewals were written there)
local function lost_without(l, key, master, replica)
  local lock
  local told = {}
  local function on_lost(lk) told[#told + 1] = lk end
  R.until_true(function() -- (a replica just synced may not acknowledge at once)
    lock = l:obtain(key, 1, 0, { renew = 0.2, on_lost = on_lost })
    return lock ~= nil
  end, 10, "an acknowledged lock")
  R.until_true(function() return l:stats().renewed >= 6 end, 5, "renewals")
  assert.is_true(lock:held())
  local t0 = R.now() -- before the stop: its own time is no part of the margin
  replica:stop()
  R.until_true(function() return not lock:held() end, 5, "the lock to be found lost")
  assert.is_true(R.now() - t0 >= 0.5, "lost before its deadline")
  assert.equal("1", master:cli("EXISTS", key))
  -- held() turns false at the local deadline; the renewal thread counts the
  -- loss when its last retry fails, which a loaded machine can delay a little
  R.until_true(function() return l:stats().lost >= 1 end, 5, "the loss counted")
  require("fluxalock").dispatch() -- (a method of the lock may have run it already)
  assert.equal(1, #told)
  assert.equal(lock, told[1])
  lock:release()
end

describe("a renewed lock with replicas = 1", function()
  local fluxalock

  lazy_setup(function() fluxalock = require "fluxalock" end)

  it("on a Sentinel pool is found lost once the master's replica stops", function()
    local master, replica, _, addrs, stop = T.replicated("flrenrep")
    fluxalock.configure { pools = { s = { sentinels = addrs, master = "flrenrep", replicas = 1,
                                          replica_timeout = 0.1, timeout = 0.5 } } }
    local ok, err = pcall(lost_without, fluxalock.locker("s"), "rr-sentinel", master, replica)
    stop()
    assert(ok, err)
  end)

  it("on a Redlock pool is found lost once one node's replica stops (no quorum of two)", function()
    local m1, r1 = pair()
    local m2, r2 = pair()
    fluxalock.configure { pools = { rl = { redlock = { m1.url, m2.url }, replicas = 1,
                                           replica_timeout = 0.1, timeout = 0.5 } } }
    local ok, err = pcall(lost_without, fluxalock.locker("rl"), "rr-redlock", m1, r1)
    for _, s in ipairs { r1, r2, m1, m2 } do if s.pid then s:stop() end end
    assert(ok, err)
  end)

  it("on a Cluster pool is found lost once the slot master's replica stops", function()
    local cluster = T.cluster()
    local ok, err = pcall(function()
      fluxalock.configure { pools = { c = { cluster = cluster.seeds, replicas = 1,
                                            replica_timeout = 0.1, timeout = 0.5 } } }
      local master = cluster:master_of(cluster:slot("rr-cluster"))
      local replica = assert(cluster:replica_of(master))
      lost_without(fluxalock.locker("c"), "rr-cluster", master, replica)
    end)
    cluster:stop()
    assert(ok, err)
  end)
end)
