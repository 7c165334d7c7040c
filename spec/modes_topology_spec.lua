-- Modes (limit, shared, fair) on Cluster and Sentinel pools, and the
-- Redlock pool's refusal: real redis-servers, real sentinels, a real
-- cluster (spec/support/topology.lua).
local R = require "support.redis"
local T = require "support.topology"

describe("modes on a cluster pool", function()
  local cluster, fluxalock
  T.setup_cluster(function(c) return {
    mcluster = { cluster = c.seeds, timeout = 0.5, connect_timeout = 0.5 },
    mprefixed = { cluster = { c.seeds[2] }, prefix = "app:" },
  } end, function(c, fl) cluster, fluxalock = c, fl end)

  it("keeps every key of a mode in the lock key's slot, on every master, prefix included", function()
    local masters = {}
    for _, case in ipairs { { "mcluster", "{a}sem", "{a}sem" }, { "mcluster", "{b}sem", "{b}sem" },
                            { "mcluster", "{c}sem", "{c}sem" }, { "mprefixed", "c-sem", "app:c-sem" } } do
      local l = fluxalock.locker(case[1])
      local slot = cluster:slot(case[3])
      local master = cluster:master_of(slot)
      masters[master.port] = true
      local a = assert(l:obtain(case[2], 5, 0, { limit = 2 }))
      local b = assert(l:obtain(case[2], 5, 0, { limit = 2, renew = true }))
      assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain(case[2], 5, 0.05, { limit = 2 }) })
      assert.equal("fluxalock:modes", master:cli("GET", case[3]))
      local i = assert(l:inspect(case[2]))
      assert.equal("limit", i.mode)
      assert.equal(2, i.holders)
      local seen = 0
      for k in master:cli("KEYS", "*fluxalock:m:*"):gmatch("[^\n]+") do
        if k:sub(-#case[2] - 1, -2) == case[2] then
          seen = seen + 1
          assert.equal(slot, cluster:slot(k), k)
        end
      end
      assert.equal(2, seen, case[3]) -- holders, meta (the queue went with its last waiter)
      assert.is_true(a:fence() < b:fence())
      assert.is_true(a:release())
      assert.is_true(b:release())
      local s = assert(l:obtain(case[2], 5, 0, { shared = true }))
      assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain(case[2], 5, 0, { fair = true }) })
      assert.is_true(s:release())
      assert.equal("free", l:inspect(case[2]).mode)
    end
    local n = 0
    for _ in pairs(masters) do n = n + 1 end
    assert.equal(3, n)
  end)

  it("a waiter in another process gets the permit when it is released", function()
    local l = fluxalock.locker("mcluster")
    local held = assert(l:obtain("{b}wsem", 10, 0, { limit = 1 }))
    local p = R.spawn(([[
      local fluxalock = require "fluxalock"
      fluxalock.configure { pools = { default = { cluster = { %q } } } }
      local lock, err = fluxalock.locker():obtain("{b}wsem", 10, 10, { limit = 1 })
      print(lock and "GOT" or tostring(err))
      if lock then lock:release() end
    ]]):format(cluster.seeds[1]))
    R.until_true(function() return l:inspect("{b}wsem").waiting == 1 end, 20, "the waiter")
    assert.is_true(held:release())
    assert.equal("GOT\n", p:wait(20))
  end)
end)

describe("modes on a cluster pool whose slot moves", function()
  local cluster, fluxalock
  T.setup_cluster(function(c) return {
    mmoving = { cluster = c.seeds, timeout = 0.5, connect_timeout = 0.5 },
  } end, function(c, fl) cluster, fluxalock = c, fl end)

  it("a waiter queued before the slot moved gets the permit on the new owner (MOVED during the wait)", function()
    local l = fluxalock.locker("mmoving")
    local key = "{m-mv}sem"
    local slot = cluster:slot(key)
    local from = cluster:master_of(slot)
    local to = cluster:other_master(from)
    local held = assert(l:obtain(key, 30, 0, { limit = 1 }))
    local p = R.spawn(([[
      local fluxalock = require "fluxalock"
      fluxalock.configure { pools = { default = { cluster = { %q }, timeout = 0.5, connect_timeout = 0.5 } } }
      local lock, err = fluxalock.locker():obtain(%q, 20, 20, { limit = 1 })
      print(lock and "GOT" or tostring(err))
      if lock then lock:release() end
    ]]):format(cluster.seeds[1], key))
    R.until_true(function() return l:inspect(key).waiting == 1 end, 20, "the waiter")
    -- every key of the slot moves: the lock, its holders, queue and meta,
    -- fence, wake-ups
    cluster:move_slot(slot, from, to)
    assert.equal("fluxalock:modes", to:cli("GET", key))
    assert.is_true(held:release()) -- follows MOVED to the new owner
    assert.equal("GOT\n", p:wait(30))
    assert.equal("free", l:inspect(key).mode)
  end)
end)

describe("modes on a sentinel pool", function()
  local fluxalock, master, replica, sentinels
  local NAME = "flmodes"

  T.setup_sentinel(NAME, function(addrs) return {
    msentinel = { sentinels = addrs, master = NAME, timeout = 0.5, connect_timeout = 0.5 },
    msentinel2 = { sentinels = addrs, master = NAME, timeout = 0.5, connect_timeout = 0.5 },
  } end, function(e)
    master, replica, sentinels, fluxalock = e.master, e.replica, e.sentinels, e.fluxalock
  end)

  it("gives permits and shared holds on the master, with inspect, renew and release", function()
    local l = fluxalock.locker("msentinel")
    local a = assert(l:obtain("s-sem", 5, 0, { limit = 2, renew = true }))
    local b = assert(l:obtain("s-sem", 5, 0, { limit = 2 }))
    assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("s-sem", 5, 0, { limit = 2 }) })
    assert.equal("fluxalock:modes", master:cli("GET", "s-sem"))
    assert.equal(2, l:inspect("s-sem").holders)
    local _, _, code = l:obtain("s-sem", 5, 0, { limit = 3 })
    assert.equal("limit", code)
    assert.is_true(a:release())
    assert.is_true(b:release())
    local r1 = assert(l:obtain("s-rw", 5, 0, { shared = true }))
    local r2 = assert(l:obtain("s-rw", 5, 0, { shared = true }))
    assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("s-rw", 5, 0, { shared = false }) })
    assert.equal("shared", l:inspect("s-rw").mode)
    assert.is_true(r1:release())
    assert.is_true(r2:release())
    assert.equal("free", l:inspect("s-rw").mode)
  end)

  it("keeps a permit through a failover with a waiter queued: the waiter's call ends, the permit holds", function()
    R.until_true(function()
      return replica:cli("INFO", "replication"):find("master_link_status:up", 1, true) ~= nil
    end, 20, "the replica in sync")
    local l = fluxalock.locker("msentinel")
    local held = assert(l:obtain("s-fo", 30, 0, { limit = 1 }))
    local p = R.spawn(([[
      local fluxalock = require "fluxalock"
      fluxalock.configure { pools = { default = { sentinels = { %q }, master = %q, timeout = 0.5,
        connect_timeout = 0.5 } } }
      local t0 = require("fluxalock.core").now()
      local lock, err = fluxalock.locker():obtain("s-fo", 20, 20, { limit = 1 })
      print(lock and "GOT" or tostring(err), require("fluxalock.core").now() - t0)
    ]]):format(("127.0.0.1:%d"):format(sentinels[1].port), NAME))
    R.until_true(function() return l:inspect("s-fo").waiting == 1 end, 20, "the waiter")
    R.until_true(function() return replica:cli("EXISTS", "s-fo") == "1" end, 5, "replication")
    master:kill()
    local out = p:wait(40)
    local took = tonumber(out:match("\t([%d.]+)\n$"))
    assert.is_nil(out:find("^GOT"), out)
    assert.is_true(took ~= nil and took < 20 + 2, out)
    -- the new master has the permit: another locker is not let in
    local second = fluxalock.locker("msentinel2")
    local lock, err
    local t = R.now() + 30
    repeat
      lock, err = second:obtain("s-fo", 5, 0, { limit = 1 })
      if err ~= "not obtained" then R.sleep(0.05) end
    until lock or err == "not obtained" or R.now() > t
    assert.is_nil(lock)
    assert.equal("not obtained", err)
    assert.is_true(held:release()) -- which finds the new master by itself
    assert.truthy(second:obtain("s-fo", 5, 0, { limit = 1 })):release()
  end)
end)

describe("modes on a redlock pool", function()
  local servers = {}
  lazy_setup(function() for i = 1, 3 do servers[i] = R.start() end end)
  lazy_teardown(function() for _, s in ipairs(servers) do s:stop() end end)

  it("raise for limit, shared and fair, and for inspect", function()
    local fluxalock = require "fluxalock"
    local nodes = {}
    for i, s in ipairs(servers) do nodes[i] = s.url end
    fluxalock.configure { pools = { mredlock = { redlock = nodes } } }
    local l = fluxalock.locker("mredlock")
    for _, name in ipairs { "limit", "shared", "fair" } do
      local opts = { [name] = name == "limit" and 2 or true }
      local ok, err = pcall(l.obtain, l, "rl", 5, 0, opts)
      assert.is_false(ok)
      assert.equal(("bad argument #4 to 'obtain' (option '%s' is not supported by Redlock pools)"):format(name),
        (err:gsub("^[^:]*:%d+: ", "")))
    end
    assert.has_error(function() l:inspect("rl") end, "fluxalock: inspect is not available on a Redlock pool")
    assert.truthy(l:obtain("rl", 5)):release() -- a plain lock still works
  end)
end)

describe("modes over TLS", function()
  local TLS = require "support.tls"
  local c, server

  lazy_setup(function()
    c = TLS.certs()
    server = TLS.start()
  end)
  lazy_teardown(function() if server then server:stop() end end)

  it("gives permits and shared holds, renewed, and wakes a waiter of another process", function()
    local fluxalock = require "fluxalock"
    local l = fluxalock.locker { url = server.tls_url, tls = { ca_file = c.ca } }
    local a = assert(l:obtain("t-sem", 0.5, 0, { limit = 1, renew = true }))
    local p = R.spawn(([[
      local fluxalock = require "fluxalock"
      local l = fluxalock.locker { url = %q, tls = { ca_file = %q } }
      local lock, err = l:obtain("t-sem", 10, 10, { limit = 1 })
      print(lock and "GOT" or tostring(err))
      if lock then lock:release() end
    ]]):format(server.tls_url, c.ca))
    R.until_true(function() return l:inspect("t-sem").waiting == 1 end, 20, "the waiter")
    local t = R.now() + 1 -- two ttls: the renewal keeps the permit
    while R.now() < t do require("fluxalock.core").sleep(0.05) end
    assert.is_true(a:held())
    assert.equal(1, l:inspect("t-sem").waiting)
    assert.is_true(a:release())
    assert.equal("GOT\n", p:wait(20))
    local s1 = assert(l:obtain("t-rw", 5, 0, { shared = true }))
    local s2 = assert(l:obtain("t-rw", 5, 0, { shared = true }))
    assert.equal(2, l:inspect("t-rw").holders)
    assert.is_true(s1:release())
    assert.is_true(s2:release())
  end)
end)
