-- A Cluster whose nodes do not announce their endpoint (Redis 7's
-- cluster-preferred-endpoint-type unknown-endpoint) redirects to ":port",
-- "the host of the node you asked".  Its nodes live on 127.0.0.2, so a
-- redirect taken to 127.0.0.1 finds nobody there.
local R = require "support.redis"
local T = require "support.topology"

describe("a cluster that redirects to ':port'", function()
  local cluster, fluxalock

  lazy_setup(function()
    cluster = T.cluster { host = "127.0.0.2", replicas = 0,
                          lines = { "cluster-preferred-endpoint-type unknown-endpoint" } }
    fluxalock = require "fluxalock"
    fluxalock.configure { pools = {
      ep = { cluster = { cluster.seeds[1] }, timeout = 0.5, connect_timeout = 0.5 },
    } }
  end)

  lazy_teardown(function()
    if cluster then cluster:stop() end
  end)

  -- move every key of the slot from 'from' to 'to', then the slot itself
  local function move_slot(slot, from, to)
    to:cli("CLUSTER", "SETSLOT", slot, "IMPORTING", from.id)
    from:cli("CLUSTER", "SETSLOT", slot, "MIGRATING", to.id)
    repeat
      local keys = from:cli("CLUSTER", "GETKEYSINSLOT", slot, "100")
      if keys ~= "" then
        local args = { "MIGRATE", to.host, to.port, "", "0", "5000", "KEYS" }
        for k in keys:gmatch("[^\n]+") do args[#args + 1] = k end
        from:cli(table.unpack(args))
      end
    until keys == ""
    for _, n in ipairs(cluster.nodes) do n:cli("CLUSTER", "SETSLOT", slot, "NODE", to.id) end
  end

  local function other_master(than)
    for _, n in ipairs(cluster.nodes) do
      if n ~= than then return n end
    end
  end

  it("redirects so (the test's own premise)", function()
    local slot = cluster:slot("{ep}probe")
    local owner = cluster:master_of(slot)
    local other = other_master(owner)
    assert.equal("MOVED " .. slot .. " :" .. owner.port, (other:cli("SET", "{ep}probe", "1"):gsub("%s+$", "")))
  end)

  it("follows a MOVED to ':port' to the host of the node that answered", function()
    local l = fluxalock.locker("ep")
    local lock = assert(l:obtain("{ep}req", 30))
    local slot = cluster:slot("{ep}req")
    local from = cluster:master_of(slot)
    local to = other_master(from)
    move_slot(slot, from, to)
    local moved = l:stats().moved
    local ok, err = lock:refresh(30)
    assert.is_true(ok, err)
    assert.equal(moved + 1, l:stats().moved)
    assert.equal("1", to:cli("EXISTS", "{ep}req"))
    for _, addr in ipairs(l._pool:info().nodes) do
      assert.is_nil(addr:find("127.0.0.1", 1, true), addr)
    end
    assert.is_true(lock:release())
  end)

  it("follows it in renewals too", function()
    local l = fluxalock.locker("ep")
    local lock = assert(l:obtain("{ep}renewed", 1, 0, { renew = 0.1 }))
    local slot = cluster:slot("{ep}renewed")
    local from = cluster:master_of(slot)
    local to = other_master(from)
    move_slot(slot, from, to)
    -- renewed on the new owner: alive there past its ttl, and held
    local renewed = l:stats().renewed
    R.until_true(function() return l:stats().renewed >= renewed + 12 end, 5, "renewals after the move")
    assert.is_true(lock:held())
    local pttl = tonumber(to:cli("PTTL", "{ep}renewed"))
    assert.is_true(pttl > 0, "no key on the new owner")
    assert.is_true(lock:release())
    assert.equal("0", to:cli("EXISTS", "{ep}renewed"))
  end)
end)
