-- Redlock over 5 real, independent redis-servers: a majority decides.
local R = require "support.redis"
local H = require "support.hosts"

-- a worker process: contends for 'hot' and reports any overlap seen on a
-- witness server (INCR on entry must give 1)
-- (R.child: locker on the Redlock pool of URLS, witness on WITNESS)
local WORKER = [[
local stop = core.now() + tonumber(os.getenv("SECONDS"))
local got, overlaps, errors = 0, 0, 0
while core.now() < stop do
  local lock, err = locker:obtain("hot", 2, 0.5)
  if lock then
    got = got + 1
    witness:call { "INCR", "got" }
    if witness:call { "INCR", "inside" } ~= 1 then overlaps = overlaps + 1 end
    core.sleep(0.002)
    witness:call { "DECR", "inside" }
    lock:release()
  elseif err ~= fluxalock.NOT_OBTAINED then
    errors = errors + 1
  end
end
print(("got=%d overlaps=%d errors=%d"):format(got, overlaps, errors))
]]

describe("a redlock pool", function()
  local servers, fluxalock, locker = {}, nil, nil

  local function urls()
    local u = {}
    for i, s in ipairs(servers) do u[i] = s.url end
    return u
  end
  local function exists(key)
    local n = 0
    for _, s in ipairs(servers) do
      if s.pid and s:cli("EXISTS", key) == "1" then n = n + 1 end
    end
    return n
  end

  lazy_setup(function()
    for i = 1, 5 do servers[i] = R.start { persist = true } end
    fluxalock = require "fluxalock"
    fluxalock.configure { pools = { default = { redlock = urls(), timeout = 0.5, connect_timeout = 0.5 } } }
    locker = fluxalock.locker()
  end)

  lazy_teardown(function()
    for _, s in ipairs(servers) do if s.pid then s:stop() end end
  end)

  it("keeps the Lock API: one holder, ttl, refresh, release on every node", function()
    -- the nodes' connections open first: a call returns once a majority
    -- answered, and a node still connecting then gets its command at the
    -- pool's next call (README, Limitations)
    assert(assert(locker:obtain("r-warm", 5)):release())
    local lock = assert(locker:obtain("r-basic", 5))
    assert.equal("fluxalock.Lock", getmetatable(lock).__name)
    assert.equal("fluxalock.Lock: r-basic (held)", tostring(lock))
    assert.equal(5, exists("r-basic"))
    local again, err = locker:obtain("r-basic", 5)
    assert.is_nil(again)
    assert.equal(fluxalock.NOT_OBTAINED, err)
    local t = lock:ttl()
    assert.is_true(t > 4 and t <= 5, tostring(t))
    assert.is_true(lock:refresh(2))
    t = lock:ttl()
    assert.is_true(t > 6 and t <= 7, tostring(t))
    assert.is_true(lock:refresh(1, { replace = true }))
    assert.is_true(lock:ttl() <= 1)
    assert.has_error(function() lock:fence() end,
      "fluxalock: fence is not available on a Redlock pool (independent counters on each node give no order)")
    assert.is_true(lock:release())
    assert.is_false(lock:release())
    assert.equal(0, exists("r-basic"))
    assert.equal("fluxalock.Locker: default (redlock:5 nodes)", tostring(locker))
  end)

  it("obtains on a majority only: a lock held on 3 nodes by another blocks it", function()
    -- another holder's token on 3 of 5 nodes
    for i = 1, 3 do servers[i]:cli("SET", "r-split", "someone-else", "PX", "5000") end
    local lock, err = locker:obtain("r-split", 5)
    assert.is_nil(lock)
    assert.equal(fluxalock.NOT_OBTAINED, err)
    -- the failed try is undone on the nodes where it did succeed
    assert.equal("0", servers[4]:cli("EXISTS", "r-split"))
    assert.equal("0", servers[5]:cli("EXISTS", "r-split"))
    -- on 2 of 5 only: this holder gets the majority
    servers[1]:cli("DEL", "r-split")
    lock = assert(locker:obtain("r-split", 5))
    assert.equal("someone-else", servers[2]:cli("GET", "r-split"))
    -- the lost node still holds the other value: release leaves it alone
    assert.is_true(lock:release())
    assert.equal("someone-else", servers[3]:cli("GET", "r-split"))
    servers[2]:cli("DEL", "r-split")
    servers[3]:cli("DEL", "r-split")
  end)

  it("reports a lost lock: ttl 0 and refresh false once a majority lost it", function()
    local lock = assert(locker:obtain("r-lost", 5))
    for i = 1, 3 do servers[i]:cli("DEL", "r-lost") end
    assert.equal(0, lock:ttl())
    assert.is_false(lock:held())
    assert.is_false(lock:refresh(1))
  end)

  it("obtains with 2 of 5 stopped, and never with 3 of 5 stopped", function()
    servers[1]:stop()
    servers[2]:stop()
    local lock, err = locker:obtain("r-down", 5)
    assert.is_truthy(lock, err)
    assert.equal(3, exists("r-down"))
    assert.is_true(lock:refresh(1))
    assert.is_true(lock:release())
    servers[3]:stop()
    local t0 = R.now()
    for _, wait in ipairs { 0, 0.3 } do
      lock, err = locker:obtain("r-down2", 5, wait)
      assert.is_nil(lock)
      assert.matches("^fluxalock: obtain redlock%(5 nodes%): 3 of 5 nodes failed, 3 needed "
        .. "%(fluxalock: connect 127.0.0.1:%d+: Connection refused%)$", err)
    end
    assert.is_true(R.now() - t0 < 3, "did not hang")
    assert.equal(0, exists("r-down2"))
    for i = 1, 3 do servers[i]:restart() end
  end)

  it("works with a single node (a quorum of 1)", function()
    local l = fluxalock.locker { redlock = { servers[1].url } }
    local lock = assert(l:obtain("r-one", 2))
    assert.is_true(lock:ttl() > 1)
    assert.is_true(lock:refresh(1))
    assert.is_true(lock:release())
    assert.is_truthy(l:obtain("r-one", 2, 0.1))
  end)

  it("does not wait for a frozen node once a majority answered", function()
    -- a timeout longer than the ttl: waiting for the frozen node would use up
    -- the whole validity, and the obtain would fail
    fluxalock.configure { pools = { slow = { redlock = urls(), timeout = 3, connect_timeout = 3 } } }
    local l = fluxalock.locker("slow")
    assert(l:obtain("r-warm", 1)):release() -- connections open before the freeze
    servers[5]:pause() -- SIGSTOP
    local t0 = R.now()
    local lock, err = l:obtain("r-frozen", 1)
    local ok, rerr
    if lock then ok, rerr = lock:release() end
    local took = R.now() - t0
    servers[5]:resume()
    assert.is_truthy(lock, err)
    assert.is_true(ok, rerr)
    assert.is_true(took < 2.5, "took " .. took .. " s")
  end)

  it("a node that answers after the majority, with no script cached yet, still takes the lock", function()
    -- new servers: no script cached.  Node 3 is frozen until the obtain
    -- has returned on the other two; its EVALSHA then meets NOSCRIPT, and
    -- the obtain that went once more as EVAL behind it takes the key.
    -- Before, the lock stood on two nodes for good (one failure from lost),
    -- and a release there had no wake-up to publish
    local fresh, u = R.servers(3)
    finally(function() for _, s in ipairs(fresh) do if s.pid then s:stop() end end end)
    fluxalock.configure { pools = { late = { redlock = u, timeout = 5, connect_timeout = 5 } } }
    fresh[3]:pause() -- SIGSTOP
    local lock, err = fluxalock.locker("late"):obtain("r-late", 30)
    fresh[3]:resume()
    assert.is_truthy(lock, err)
    R.until_true(function() return fresh[3]:cli("GET", "r-late") == lock:token() end, 5, "the lock on node 3")
    assert.is_true(lock:release())
    R.until_true(function() return fresh[3]:cli("EXISTS", "r-late") == "0" end, 5, "the release on node 3")
  end)

  it("runs under an event-loop host: coroutines contend, each fan-out yields", function()
    local r = H.cqueues_rounds(fluxalock, "r-host", function() return locker end)
    assert.is_true(r.ok, tostring(r.err))
    assert.equal(30, r.got)
    assert.equal(0, r.overlaps)
    assert.is_true(r.waits > 30, "the host waited " .. r.waits .. " times")
    assert.equal(0, exists("r-host"))
  end)

  it("keeps one holder at a time while a node is stopped and restarted mid-run", function()
    local witness = R.start()
    local env = { URLS = table.concat(urls(), " "), TIMEOUT = 0.3, WITNESS = witness.port, SECONDS = "3" }
    local procs = {}
    for i = 1, 4 do procs[i] = R.child(WORKER, env) end
    local function locks() return tonumber(witness:cli("GET", "got")) or 0 end
    -- the stop falls inside the run: once the workers hold in turn, and
    -- the restart once they went on holding without the node
    R.until_true(function() return locks() >= 10 end, 10, "locks before the stop")
    servers[2]:stop()
    local before = locks()
    R.until_true(function() return locks() >= before + 10 end, 10, "locks with a node stopped")
    servers[2]:restart() -- persistent (AOF, fsync always): it kept its locks
    local total = 0
    for i = 1, 4 do
      local out = procs[i]:wait(20)
      local got, overlaps = out:match("got=(%d+) overlaps=(%d+)")
      assert.is_truthy(got, out)
      assert.equal("0", overlaps, out)
      total = total + tonumber(got)
    end
    witness:stop()
    assert.is_true(total > 20, "only " .. total .. " locks in 3 s")
  end)
end)
