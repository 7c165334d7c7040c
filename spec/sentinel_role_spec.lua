-- A sentinel that names a replica as the master (here one that was told to
-- watch the replica: a stale or misconfigured sentinel) is not believed:
-- the Lua layer and the renewal thread both ask ROLE there first.
local R = require "support.redis"
local T = require "support.topology"

describe("a renewed Sentinel lock whose first sentinel names a replica", function()
  local NAME = "flrole"
  local master, replica, liar, honest, fluxalock

  lazy_setup(function()
    master = R.start { args = { "--repl-diskless-sync-delay", "0" } }
    replica = R.start { args = { "--replicaof", "127.0.0.1", tostring(master.port) } }
    R.until_true(function()
      return replica:cli("INFO", "replication"):find("master_link_status:up", 1, true)
    end, 10, "replica in sync")
    liar = T.sentinels(replica, {}, 1, NAME)[1]
    honest = T.sentinels(master, { replica }, 1, NAME)[1]
    fluxalock = require "fluxalock"
    fluxalock.configure { pools = { role = { sentinels = { liar.addr, honest.addr }, master = NAME,
                                              timeout = 0.2, connect_timeout = 0.5 } } }
  end)

  lazy_teardown(function()
    for _, s in ipairs { liar, honest, replica, master } do
      if s and s.pid then s:stop() end
    end
  end)

  -- a connection whose last command was a SENTINEL query (the renewal
  -- thread keeps its connection to a sentinel it asked; the Lua layer
  -- closes its own)
  local function asked(s)
    return s:cli("CLIENT", "LIST"):find("cmd=sentinel", 1, true) ~= nil
  end

  it("is renewed on the master after a failed renewal, not moved to the replica", function()
    -- the premise: the first sentinel names the replica
    assert.equal("127.0.0.1\n" .. replica.port, liar:cli("SENTINEL", "get-master-addr-by-name", NAME))
    local l = fluxalock.locker("role")
    local lock = assert(l:obtain("r-renewed", 2, 0, { renew = 0.2 }))
    assert.equal("1", master:cli("EXISTS", "r-renewed"))
    R.until_true(function() return not asked(liar) end, 5, "the Lua layer's sentinel connection to close")
    -- writes paused: a renewal times out, and the thread asks the sentinels
    assert.equal("OK", master:cli("CLIENT", "PAUSE", "800", "WRITE"))
    R.until_true(function() return asked(liar) end, 5, "the renewal to ask the first sentinel")
    local renewed = l:stats().renewed
    R.until_true(function() return l:stats().renewed >= renewed + 5 end, 6, "renewals after the pause")
    assert.is_true(lock:held())
    assert.equal(0, l:stats().lost)
    assert.is_true(tonumber(master:cli("PTTL", "r-renewed")) > 0)
    assert.is_true(lock:release())
    assert.equal("0", master:cli("EXISTS", "r-renewed"))
  end)
end)
