-- Redis Cluster: 3 masters + 3 replicas, real processes made by
-- redis-cli --cluster create; locks routed by hash slot, slots migrated and
-- a replica promoted while real processes contend.
local R = require "support.redis"
local T = require "support.topology"
local H = require "support.hosts"

-- a worker process: contends for KEY until the witness says stop; reports
-- every lock (INCR got), any overlap (INCR on entry must give 1), and the
-- redirects its pool followed (moved, asked) to the witness server
-- (R.child: locker on the Cluster pool of SEEDS, witness on WITNESS)
local WORKER = [[
local key = os.getenv("KEY")
local moved, asked, errors = 0, 0, {}
-- ends when the witness says stop, when the witness is gone (a failed
-- spec run must not leave a worker spinning), or after 120 s at most
local started = core.now()
local function going()
  local v, werr = witness:call { "GET", "stop" }
  return v ~= "1" and werr == nil and core.now() < started + 120
end
while going() do
  local lock, err = locker:obtain(key, 2, 1)
  if lock then
    if witness:call { "INCR", "inside" } ~= 1 then witness:call { "INCR", "overlaps" } end
    core.sleep(0.001)
    witness:call { "DECR", "inside" }
    local ok, rerr = lock:release()
    if ok == nil then errors[#errors + 1] = rerr end
    witness:call { "INCR", "got" }
  elseif err ~= fluxalock.NOT_OBTAINED then
    errors[#errors + 1] = err
  end
  local info = locker:stats()
  if info.moved > moved then witness:call { "INCRBY", "moved", info.moved - moved } moved = info.moved end
  if info.asked > asked then witness:call { "INCRBY", "asked", info.asked - asked } asked = info.asked end
end
print(("errors=%d %s"):format(#errors, errors[1] or ""))
]]

describe("a cluster pool", function()
  local cluster, fluxalock, locker

  lazy_setup(function()
    cluster = T.cluster()
    fluxalock = require "fluxalock"
    fluxalock.configure { pools = {
      default = { cluster = cluster.seeds, timeout = 0.5, connect_timeout = 0.5 },
      prefixed = { cluster = { cluster.seeds[2] }, prefix = "app:" },
      nowhere = { cluster = { "127.0.0.1:1", "127.0.0.1:2" }, connect_timeout = 0.2 },
    } }
    locker = fluxalock.locker()
  end)

  lazy_teardown(function()
    if cluster then cluster:stop() end
  end)

  -- every key on the lock's master, with the slot it hashes to
  local function keys_on(node)
    local t = {}
    for k in node:cli("KEYS", "*"):gmatch("[^\n]+") do t[k] = cluster:slot(k) end
    return t
  end

  it("keeps the Lock API on keys of every master", function()
    local masters = {}
    -- {a}, {b}, {c} hash to slots 15495, 3300 and 7365: one per master
    for _, key in ipairs { "{a}lock", "{b}lock", "{c}lock", "c-key-1", "c-key-2" } do
      local slot = cluster:slot(key)
      local master = cluster:master_of(slot)
      masters[master.port] = true
      local lock = assert(locker:obtain(key, 5))
      assert.equal("fluxalock.Lock", getmetatable(lock).__name)
      assert.equal("1", master:cli("EXISTS", key))
      local again, err = locker:obtain(key, 5)
      assert.is_nil(again)
      assert.equal(fluxalock.NOT_OBTAINED, err)
      assert.is_true(lock:ttl() > 4)
      assert.is_true(lock:refresh(2))
      assert.is_true(lock:ttl() > 6)
      assert.is_true(lock:fence() >= 1)
      assert.is_true(lock:release())
      assert.is_false(lock:release())
      assert.equal(0, lock:ttl())
      assert.equal("0", master:cli("EXISTS", key))
    end
    local n = 0
    for _ in pairs(masters) do n = n + 1 end
    assert.equal(3, n)
    assert.equal("fluxalock.Locker: default (cluster:" .. cluster.seeds[1] .. ")", tostring(locker))
  end)

  it("keeps companion keys (fence, wake-up) in the lock key's slot, prefix and hash tags included", function()
    for _, case in ipairs { { "default", "c-comp", "c-comp" }, { "default", "{user7}.profile", "{user7}.profile" },
                            { "prefixed", "c-comp", "app:c-comp" } } do
      local l = fluxalock.locker(case[1])
      local slot = cluster:slot(case[3])
      local master = cluster:master_of(slot)
      local lock = assert(l:obtain(case[2], 5))
      assert.is_nil(l:obtain(case[2], 5, 0.02)) -- a waiter: on the wake-up list
      assert.equal(lock:token(), master:cli("GET", case[3])) -- the holder's value untouched
      assert.is_true(lock:release())            -- which pushes a wake-up
      local seen = keys_on(master)
      local fence, wake = 0, 0
      for k, s in pairs(seen) do
        if k:find("fluxalock:fence", 1, true) and s == slot then fence = fence + 1 end
        if k:find("fluxalock:wake:", 1, true) and k:sub(-#case[2]) == case[2] then
          wake = wake + 1
          assert.equal(slot, s, k)
        end
      end
      assert.equal(1, fence, case[3])
      assert.equal(1, wake, case[3])
    end
    assert.equal(cluster:slot("{user7}.a"), cluster:slot("{user7}.profile"))
  end)

  it("wakes a waiter when another process releases, long before its backoff would retry", function()
    -- one backoff step (5 s) longer than the bound asserted: only the
    -- release's wake-up can get the waiter in on time.  The holder releases
    -- once it sees the waiter blocked on a wake-up list on one of the nodes
    -- (CLIENT LIST), not after a guessed pause.
    local holder = R.child([[
      local lock = assert(locker:obtain("c-wait", 30))
      print("held")
      local nodes = {}
      for i, s in ipairs(C.seeds) do
        local host, port = s:match("^(.*):(%d+)$")
        nodes[i] = core.pool { host = host, port = tonumber(port) }
      end
      local function blocked()
        for _, n in ipairs(nodes) do
          if (n:call { "CLIENT", "LIST" } or ""):find(" flags=%a*b[^\n]- cmd=blpop") then return true end
        end
        return false
      end
      local deadline = core.now() + 20
      while not blocked() and core.now() < deadline do core.sleep(0.005) end
      print(("releasing %.6f"):format(core.now()))
      assert(lock:release())
    ]], { SEEDS = table.concat(cluster.seeds, " ") })
    R.until_true(function() return holder:output():find("held", 1, true) end, 10, "holder")
    local slow = fluxalock.locker { cluster = cluster.seeds, retry_step = 5, retry_max = 5 }
    local lock, err = slow:obtain("c-wait", 10, 8)
    local got = R.now()
    local released = tonumber(holder:wait(10):match("releasing ([%d.]+)"))
    assert.is_truthy(lock, err)
    assert.is_truthy(released, "the holder did not release")
    assert.is_true(got >= released)
    assert.is_true(got - released < 1, ("woken %.3f s after the release"):format(got - released))
    assert.is_true(lock:release())
  end)

  it("runs under an event-loop host: coroutines contend, requests yield", function()
    local r = H.cqueues_rounds(fluxalock, "c-host")
    -- the same locker: its pools now wait through the host
    assert.equal(locker, r.locker)
    assert.is_true(r.ok, tostring(r.err))
    assert.equal(30, r.got)
    assert.equal(0, r.overlaps)
    assert.is_true(r.waits > 30, "the host waited " .. r.waits .. " times")
  end)

  it("waits for the slot's replica with replicas = 1", function()
    fluxalock.configure { pools = { acked = { cluster = cluster.seeds, replicas = 1, replica_timeout = 0.5 } } }
    local l, lock, err = fluxalock.locker("acked"), nil, nil
    -- (the replicas may still be syncing right after the cluster was made)
    R.until_true(function()
      lock, err = l:obtain("{b}acked", 5)
      return lock ~= nil
    end, 10, "an acknowledged lock")
    local master = cluster:master_of(cluster:slot("{b}acked"))
    -- (KEYS: a replica redirects keyed commands to its master)
    assert.equal("{b}acked", cluster:replica_of(master):cli("KEYS", "{b}acked"), err)
    assert.is_true(lock:refresh(1))
    assert.is_true(lock:release())
  end)

  it("fails clearly when no seed answers, without connecting in locker()", function()
    local l = fluxalock.locker("nowhere")
    local lock, err = l:obtain("x", 1)
    assert.is_nil(lock)
    assert.matches("^fluxalock: cluster slots: no node answered %(.*127.0.0.1:1.*127.0.0.1:2", err)
  end)

  local function contend(key, witness)
    local env = { SEEDS = table.concat(cluster.seeds, " "), TIMEOUT = 0.5, WITNESS = witness.port, KEY = key }
    local procs = {}
    for i = 1, 3 do procs[i] = R.child(WORKER, env) end
    return procs
  end
  local function finish(procs, witness)
    witness:cli("SET", "stop", "1")
    for _, p in ipairs(procs) do
      local out = p:wait(20)
      assert.matches("^errors=%d+", out)
    end
    assert.equal("", witness:cli("GET", "overlaps"))
  end
  local function count(witness, what) return (witness:counts(what)) end

  it("follows a slot migrated while processes contend (ASK, then MOVED), zero overlaps", function()
    local witness = R.start()
    local slot = cluster:slot("{c-hot}")
    local from = cluster:master_of(slot)
    local to = cluster:other_master(from)
    local info = function() return locker:stats() end
    -- this process's locker learnt the slot map before the migration
    local mine = assert(locker:obtain("{c-hot}mine", 30))
    local procs = contend("{c-hot}shared", witness)
    R.until_true(function() return count(witness, "got") >= 20 end, 10, "contention")
    cluster:move_slot(slot, from, to, true) -- keys moved, the slot still migrating
    -- the slot is still migrating: the source answers ASK for its keys, and
    -- the lock's own methods follow it
    local asked = info().asked
    local left, terr = mine:ttl()
    assert.is_true(left and left > 0, tostring(terr) .. " from=" .. from.port .. " to=" .. to.port)
    assert.is_true(info().asked > asked, "no ASK followed")
    cluster:give_slot(slot, to)
    -- done: the source answers MOVED, the map is updated once
    local moved = info().moved
    assert.is_true(mine:refresh(1))
    assert.is_true(info().moved == moved + 1, "no MOVED followed")
    assert.is_true(mine:release())
    assert.equal("0", to:cli("EXISTS", "{c-hot}mine"))
    -- and the contenders go on locking on the new owner
    local got = count(witness, "got")
    R.until_true(function() return count(witness, "got") >= got + 20 end, 10, "locks after the move")
    finish(procs, witness)
    assert.equal(to, cluster:master_of(slot, to))
    witness:stop()
  end)

  it("resumes locking after a replica is promoted (CLUSTER FAILOVER) mid-run, zero overlaps", function()
    local witness = R.start()
    local key = "c-fail"
    local slot = cluster:slot(key)
    local master = cluster:master_of(slot)
    local replica = assert(cluster:replica_of(master))
    local procs = contend(key, witness)
    R.until_true(function() return count(witness, "got") >= 20 end, 10, "contention")
    assert.equal("OK", replica:cli("CLUSTER", "FAILOVER"))
    R.until_true(function() return replica:cli("ROLE"):find("^master") ~= nil end, 10, "promotion")
    local got = count(witness, "got")
    R.until_true(function() return count(witness, "got") >= got + 20 end, 10, "locks after the failover")
    finish(procs, witness)
    -- the same locker of this process follows too
    local lock, err = locker:obtain(key, 5, 2)
    assert.is_truthy(lock, err)
    assert.equal("1", replica:cli("EXISTS", key))
    assert.is_true(lock:release())
    witness:stop()
  end)
  it("lets a lock find its slot's promoted replica by itself after the master is killed", function()
    fluxalock.configure { pools = { acked = { cluster = cluster.seeds, replicas = 1, replica_timeout = 0.5,
                                              timeout = 0.5, connect_timeout = 0.5 } } }
    local l, lock = fluxalock.locker("acked"), nil
    -- replicas = 1: the lock is on the replica before obtain returns
    R.until_true(function()
      lock = l:obtain("{c}crash", 30)
      return lock ~= nil
    end, 10, "an acknowledged lock")
    local master = cluster:master_of(cluster:slot("{c}crash"))
    local replica = assert(cluster:replica_of(master))
    master:stop("KILL") -- by PID
    R.until_true(function() return replica:cli("ROLE"):find("^master") ~= nil end, 20, "promotion")
    -- no locker call in between: the lock's own requests ask another node
    -- when theirs is gone, and follow its MOVED
    local left, errs = nil, {}
    R.until_true(function()
      local err
      left, err = lock:ttl()
      if not left then errs[#errs + 1] = err end
      return left ~= nil
    end, 10, "the lock's ttl from the new master")
    for _, e in ipairs(errs) do assert.matches("^fluxalock: ", e) end
    assert.is_true(left > 0)
    -- the promoted replica has no replica of its own: a refresh is done on
    -- it but cannot be acknowledged, and says so
    local ok, err = lock:refresh(1)
    assert.is_nil(ok)
    assert.equal("fluxalock: refresh 127.0.0.1:" .. replica.port .. ": 0 of 1 replicas acknowledged the refresh", err)
    assert.is_true(lock:release())
    assert.equal("0", replica:cli("EXISTS", "{c}crash"))
  end)
end)
