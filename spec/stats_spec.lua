-- locker:stats(): the counters after known sequences of calls, on a single
-- server, in every pool kind (Sentinel, Cluster, Redlock: real topologies)
-- and under the event-loop hosts; and the log events those calls make.
local R = require "support.redis"
local T = require "support.topology"
local H = require "support.hosts"

local fluxalock = require "fluxalock"

-- the counters a fresh locker starts from
local ZERO = { obtained = 0, not_obtained = 0, errors = 0, released = 0, lost = 0,
  refreshed = 0, renewed = 0, waited = 0, waiting = 0, in_flight = 0, wait_seconds = 0, wait_max = 0,
  reconnects = 0, redirects = 0 }

-- the stats without the timing figures (checked on their own)
local function counts(l)
  local t = l:stats()
  t.wait_seconds, t.wait_max = nil, nil
  return t
end

local function expect(l, changes, extra)
  local want = {}
  for k, v in pairs(ZERO) do want[k] = v end
  for k, v in pairs(extra or {}) do want[k] = v end
  for k, v in pairs(changes) do want[k] = v end
  want.wait_seconds, want.wait_max = nil, nil
  assert.same(want, counts(l))
end

-- obtain ok, not obtained, ttl, refresh, release true, release of a lock
-- that expired (false: lost); the same on every pool kind
local function sequence(l, key)
  local a = assert(l:obtain(key, 5))
  assert.is_nil(l:obtain(key, 5))
  assert.is_true(a:ttl() > 0)
  assert.is_true(a:refresh(1))
  assert.is_true(a:release())
  assert.is_false(a:release()) -- released already: no request, nothing counted
  local b = assert(l:obtain(key .. ":short", 0.05))
  R.until_true(function() return b:ttl() == 0 end, 5, "the lock to expire")
  assert.is_false(b:release())
end
local SEQUENCE = { obtained = 2, not_obtained = 1, released = 1, refreshed = 1, lost = 1 }

-- the ops of the log events a sequence made
local function ops(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.op .. ":" .. tostring(e.outcome or e.error) end
  return t
end

describe("locker:stats()", function()
  local server

  R.setup({ module = false, teardown = function() fluxalock.configure { log = false } end },
    function(e) server = e.server end)

  it("starts at zero and returns a fresh table each time", function()
    local l = fluxalock.locker { url = server.url }
    assert.same(ZERO, l:stats())
    local t = l:stats()
    t.obtained = 99
    assert.equal(0, l:stats().obtained)
    assert.has_error(function() l.stats({}) end,
      "calling 'stats' on bad self (fluxalock.Locker expected, got table)")
  end)

  it("counts obtained, not obtained, released, refreshed and lost", function()
    local l = fluxalock.locker { url = server.url }
    sequence(l, "st-seq")
    expect(l, SEQUENCE)
  end)

  it("counts a lock found lost by ttl() or refresh() once", function()
    local l = fluxalock.locker { url = server.url }
    local a = assert(l:obtain("st-lost-ttl", 5))
    local b = assert(l:obtain("st-lost-refresh", 5))
    server:cli("DEL", "st-lost-ttl", "st-lost-refresh")
    assert.equal(0, a:ttl())
    assert.is_false(b:refresh(1))
    assert.is_false(a:release())
    assert.is_false(b:release())
    expect(l, { obtained = 2, lost = 2 })
  end)

  it("counts an obtain that waited for a holder in another process, and how long", function()
    server:cli("DEL", "st-wait")
    -- the holder holds until the parent waits: blocked on the key's wake-up list
    local child = R.holder(server, "st-wait", { ttl = 10, until_waiter = true })
    local l = fluxalock.locker { url = server.url }
    local t0 = R.now()
    local lock = assert(l:obtain("st-wait", 5, 5))
    local took = R.now() - t0
    assert.equal("released true\n", child:wait())
    assert.is_true(lock:release())
    local s = l:stats()
    assert.equal(1, s.waited)
    assert.equal(1, s.obtained)
    assert.is_true(s.wait_seconds > 0 and s.wait_seconds <= took, tostring(s.wait_seconds))
    assert.equal(s.wait_seconds, s.wait_max)
    local first = s.wait_seconds
    -- a wait that runs out counts too: waited, and not obtained
    local holder = assert(l:obtain("st-wait-out", 5))
    assert.is_nil(l:obtain("st-wait-out", 5, 0.1))
    assert.is_true(holder:release())
    s = l:stats()
    assert.equal(2, s.waited)
    assert.equal(1, s.not_obtained)
    -- the second wait lasted its whole 0.1 s: the longest is at least that,
    -- and the total is both waits
    assert.is_true(s.wait_max >= 0.1 - 0.001 and s.wait_max >= first, tostring(s.wait_max))
    assert.is_true(s.wait_seconds >= first + 0.1 - 0.001, tostring(s.wait_seconds))
  end)

  it("counts runtime failures of obtain and of a lock's calls (server stopped)", function()
    local down = R.start()
    local l = fluxalock.locker { url = down.url, timeout = 0.5, connect_timeout = 0.5 }
    local lock = assert(l:obtain("st-err", 5))
    down:stop()
    local none, err = l:obtain("st-err2", 5)
    assert.is_nil(none)
    assert.matches("^fluxalock: ", err)
    assert.is_nil(lock:ttl())
    assert.is_nil(lock:refresh(1))
    assert.is_nil(lock:release())
    assert.is_true(lock:held()) -- not known to be released
    expect(l, { obtained = 1, errors = 4 })
  end)

  it("counts a reconnect after CLIENT KILL, not after locker:close()", function()
    local l = fluxalock.locker { url = server.url }
    assert(l:obtain("st-rc", 1)):release()
    assert.equal(0, l:stats().reconnects)
    server:cli("CLIENT", "KILL", "TYPE", "normal")
    assert(l:obtain("st-rc", 1)):release()
    assert.equal(1, l:stats().reconnects)
    l:close()
    assert(l:obtain("st-rc", 1)):release()
    assert.equal(1, l:stats().reconnects)
  end)

  it("is shared by the lockers of one configured pool; a lock counts into the locker that made it", function()
    fluxalock.configure { pools = { st_shared = server.url } }
    local l = fluxalock.locker("st_shared")
    local lock = assert(l:obtain("st-shared", 5))
    assert.equal(1, fluxalock.locker("st_shared"):stats().obtained)
    -- redefined: a new locker from zero; the old lock still counts into the old one
    fluxalock.configure { pools = { st_shared = { url = server.url, timeout = 2 } } }
    local l2 = fluxalock.locker("st_shared")
    assert.are_not.equal(l, l2)
    assert.is_true(lock:release())
    assert.equal(1, l:stats().released)
    assert.same(ZERO, l2:stats())
    fluxalock.configure { pools = { st_shared = false } }
  end)

  describe("under the hosts", function()
    for _, name in ipairs { "cqueues", "luv" } do
      it(name .. ": 20 coroutines on 2 keys: every obtain counted, the waits among them", function()
        fluxalock.configure { host = name }
        local events, cos = {}, {}
        local l = fluxalock.locker { url = server.url, log = function(e)
          events[#events + 1] = e
          cos[#cos + 1] = coroutine.running()
        end }
        local d = H[name]()
        local mine = {}
        for i = 1, 20 do
          d.spawn(function()
            mine[coroutine.running()] = true
            local lock <close> = assert(l:obtain("st-host:" .. i % 2, 5, 5))
            d.sleep(0.002)
            assert(lock:held())
          end)
        end
        d.run()
        fluxalock.configure { host = false }
        assert.same({}, d.errors)
        local s = l:stats()
        assert.equal(20, s.obtained)
        assert.equal(20, s.released)
        assert.equal(0, s.errors)
        assert.is_true(s.waited >= 1 and s.waited <= 18, tostring(s.waited))
        -- one event per request: every release has one; an obtain handed
        -- the lock by a release here made no request of its own
        -- (spec/handover_spec.lua), the others one or more
        local releases = 0
        for _, e in ipairs(events) do if e.op == "release" then releases = releases + 1 end end
        assert.equal(20, releases)
        assert.is_true(#events >= 22)
        -- every event came from one of the coroutines that made the requests
        for _, co in ipairs(cos) do assert.is_true(mine[co]) end
      end)
    end
  end)
end)

describe("locker:stats() in the pool kinds", function()
  local events
  local function log(e) events[#events + 1] = e end

  before_each(function() events = {} end)
  lazy_teardown(function() fluxalock.configure { log = false } end)

  -- one event per operation (not per node), in order
  local SEQUENCE_OPS = { "obtain:obtained", "obtain:not obtained", "ttl:held", "refresh:refreshed",
    "release:released", "obtain:obtained" }

  local function check_events(prefix)
    local got = ops(events)
    for i, want in ipairs(SEQUENCE_OPS) do assert.equal(want, got[i], prefix .. " event " .. i) end
    assert.equal("ttl:lost", got[#got]) -- then release() knew it: no request
    for _, e in ipairs(events) do
      assert.is_true(e.ok)
      assert.equal("number", type(e.seconds))
    end
  end

  describe("Redlock", function()
    local servers = {}
    lazy_setup(function() for i = 1, 3 do servers[i] = R.start() end end)
    lazy_teardown(function() for _, s in ipairs(servers) do if s.pid then s:stop() end end end)

    it("counts per operation, not per node; a node's errors under quorum are no error", function()
      local urls = {}
      for i, s in ipairs(servers) do urls[i] = s.url end
      local l = fluxalock.locker { redlock = urls, timeout = 0.5, connect_timeout = 0.5, log = log }
      sequence(l, "st-rl")
      expect(l, SEQUENCE)
      check_events("redlock")
      for _, e in ipairs(events) do assert.equal("redlock:3 nodes", e.pool) end
      servers[3]:stop()
      assert(l:obtain("st-rl2", 5)):release() -- 2 of 3: a quorum
      servers[2]:stop()
      assert.is_nil(l:obtain("st-rl3", 5))
      expect(l, { obtained = 3, not_obtained = 1, released = 2, refreshed = 1, lost = 1, errors = 1 })
      assert.is_false(events[#events].ok)
      assert.matches("2 of 3 nodes failed", events[#events].error)
    end)
  end)

  describe("Sentinel", function()
    local master, addrs, stop
    local NAME = "flstats"
    lazy_setup(function()
      local _
      master, _, _, addrs, stop = T.replicated(NAME)
    end)
    lazy_teardown(function() if stop then stop() end end)

    it("counts the sequence, and a failover as a failover and reconnects", function()
      fluxalock.configure { pools = { st_sentinel = { sentinels = addrs, master = NAME,
        timeout = 0.5, connect_timeout = 0.5 } }, log = log }
      local l = fluxalock.locker("st_sentinel")
      sequence(l, "st-sn")
      expect(l, SEQUENCE, { failovers = 0 })
      -- discovery asks a sentinel, then ROLE on the master: 'call' events
      local calls = {}
      for _, e in ipairs(events) do if e.op == "call" then calls[#calls + 1] = e.command end end
      assert.same({ "SENTINEL", "ROLE" }, calls)
      local lock_events = {}
      for _, e in ipairs(events) do if e.op ~= "call" then lock_events[#lock_events + 1] = e end end
      events = lock_events
      check_events("sentinel")
      -- the master dies; the replica is promoted; the same locker finds it
      master:stop("KILL")
      local lock
      R.until_true(function()
        lock = l:obtain("st-sn-after", 5)
        return lock
      end, 30, "an obtain on the promoted replica")
      assert.is_true(lock:release())
      local s = l:stats()
      assert.equal(1, s.failovers)
      assert.is_true(s.reconnects >= 1, tostring(s.reconnects))
      assert.is_true(s.errors >= 1, tostring(s.errors)) -- obtains that failed meanwhile
      fluxalock.configure { pools = { st_sentinel = false }, log = false }
    end)
  end)

  describe("Cluster", function()
    local cluster
    lazy_setup(function() cluster = T.cluster() end)
    lazy_teardown(function() if cluster then cluster:stop() end end)

    it("counts the sequence, and a MOVED followed as a redirect", function()
      local l = fluxalock.locker { cluster = cluster.seeds, timeout = 0.5, connect_timeout = 0.5, log = log }
      sequence(l, "{st-cl}")
      expect(l, SEQUENCE, { moved = 0, asked = 0, slot_reloads = 1 })
      local calls = 0
      for _, e in ipairs(events) do if e.op == "call" then calls = calls + 1 end end
      assert.equal(1, calls) -- CLUSTER SLOTS
      local lock_events = {}
      for _, e in ipairs(events) do if e.op ~= "call" then lock_events[#lock_events + 1] = e end end
      events = lock_events
      check_events("cluster")
      -- a slot (holding no key yet) handed to another master behind the
      -- locker's back: its next request there is answered MOVED
      local key = "st-moved"
      local slot = cluster:slot(key)
      local from = cluster:master_of(slot)
      local to = cluster:other_master(from)
      cluster:give_slot(slot, to)
      R.until_true(function() return cluster:master_of(slot, from) == to end, 10, "the slot moved")
      assert(l:obtain(key, 5)):release()
      local s = l:stats()
      assert.equal(1, s.redirects)
      assert.equal(1, s.moved)
      assert.equal(0, s.asked)
    end)
  end)
end)
