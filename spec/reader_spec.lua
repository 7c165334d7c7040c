-- The reader role of a shared connection under a host (csrc/conn.c): one
-- coroutine per connection waits on its socket, the others park until it
-- hands them their replies.  A coroutine woken to take the role over may
-- find its own reply already in and end at once; it must still wake the
-- next one, or the coroutines parked behind it sleep until their request
-- times out with nobody reading (seen as 2000 coroutines stalled for a
-- whole `timeout` in about one run out of fifteen, in the first burst on a
-- fresh server).
local R = require "support.redis"
local H = require "support.hosts"

describe("a shared connection under luv", function()
  local server, fl
  R.setup({ locker = false, teardown = function(e) e.fluxalock.configure { host = false } end },
    function(e) server, fl = e.server, e.fluxalock end)

  it("never leaves parked requests without a reader (15 stampedes of 1000, wait < timeout)", function()
    local d = H.luv()
    -- a stalled request waits its whole timeout (5 s); each obtain may wait
    -- only 3 s in all, so a stall shows as "not obtained"
    fl.configure { host = "luv", pools = { rd = { url = server.url, timeout = 5 } } }
    local l = fl.locker "rd"
    local failed, done = {}, 0
    for run = 1, 15 do
      -- the stall came in the first burst on a fresh server: connections
      -- opening, and every script answered NOSCRIPT and sent again
      l:close()
      server:cli("SCRIPT", "FLUSH")
      local st = H.stampede(d, l, 1000, function(i) return ("rd:%d:%d"):format(run, i % 100) end, 10, 3)
      d.run()
      table.move(st.failed, 1, #st.failed, #failed + 1, failed)
      done = done + st.done
    end
    fl.configure { host = false }
    assert.same({}, d.errors)
    assert.same({}, failed)
    assert.equal(15 * 1000, done)
  end)
end)
