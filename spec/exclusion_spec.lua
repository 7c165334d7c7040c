-- Mutual exclusion across real OS processes: every process takes the same
-- lock hundreds of times; inside the critical section it INCRs a holders
-- counter (which must come back 1), bumps a total, and DECRs the holders.
local R = require "support.redis"

local PROCS, ROUNDS = 4, 300

-- (R.child: the counters go through the witness, a connection of its own,
-- not the lock's)
local function contender(server, key, rounds, locker_expr)
  return R.child(([[
    locker = %s
    local counters = witness
    local overlaps, failures, done = 0, {}, 0
    for _ = 1, %d do
      local lock, err = locker:obtain(%q, 10, 10)
      if not lock then
        failures[#failures + 1] = tostring(err)
      else
        local n = counters:call { "INCR", "holders" }
        if n ~= 1 then overlaps = overlaps + 1 end
        counters:call { "INCR", "total" }
        counters:call { "GET", "holders" } -- widen the window a little
        counters:call { "DECR", "holders" }
        if lock:release() ~= true then failures[#failures + 1] = "release not true" end
        done = done + 1
      end
    end
    print(("DONE %%d %%d %%d %%s"):format(done, overlaps, #failures, failures[1] or "-"))
  ]]):format(locker_expr or "locker", rounds, key), { URL = server.url, WITNESS = server.port })
end

describe("mutual exclusion", function()
  local server
  R.setup({ locker = false }, function(e) server = e.server end)

  -- rediskey: the lock's key in Redis (with the prefix)
  local function run(key, locker_expr, rediskey)
    server:cli("DEL", "holders", "total")
    local procs = {}
    for i = 1, PROCS do procs[i] = contender(server, key, ROUNDS, locker_expr) end
    local total_done = 0
    for i, p in ipairs(procs) do
      local out = p:wait(120)
      local done, overlaps, nfail, first = out:match("DONE (%d+) (%d+) (%d+) (%S+)")
      assert.truthy(done, "process " .. i .. " did not finish: " .. out)
      assert.equal("0", overlaps, "process " .. i .. " saw another holder inside the section")
      assert.equal("0", nfail, "process " .. i .. " failed: " .. first)
      assert.equal(tostring(ROUNDS), done)
      total_done = total_done + tonumber(done)
    end
    assert.equal(PROCS * ROUNDS, total_done)
    assert.same({ PROCS * ROUNDS, 0 }, { server:counts("total", "holders") })
    assert.equal("0", server:cli("EXISTS", rediskey or key))
  end

  it(("holds: %d processes x %d acquisitions on one key, zero overlaps"):format(PROCS, ROUNDS), function()
    run("mutex")
  end)

  it("holds for a binary key behind a prefix, over the Unix socket", function()
    -- same lock, other paths through the code: a prefix, a NUL byte, a socket
    local expr = ("fluxalock.locker { path = %q, prefix = \"ex:\" }"):format(server.socket)
    run("mu\0tex", expr, "ex:mu\0tex")
  end)
end)
