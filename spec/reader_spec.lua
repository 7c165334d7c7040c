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

  setup(function()
    server = R.start()
    fl = R.fluxalock(server)
  end)
  teardown(function()
    fl.configure { host = false }
    server:stop()
  end)

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
      l._pool:close()
      server:cli("SCRIPT", "FLUSH")
      for i = 1, 1000 do
        d.spawn(function()
          local lock, err = l:obtain(("rd:%d:%d"):format(run, i % 100), 10, 3)
          if not lock then
            failed[#failed + 1] = tostring(err)
            return
          end
          d.sleep(0.001)
          assert(lock:release())
          done = done + 1
        end)
      end
      d.run()
    end
    fl.configure { host = false }
    assert.same({}, d.errors)
    assert.same({}, failed)
    assert.equal(15 * 1000, done)
  end)
end)

describe("a shared connection under luv whose reader is closed", function()
  local server, fl

  setup(function()
    server = R.start()
    fl = R.fluxalock(server, { max_connections = 1, timeout = 3 })
  end)
  teardown(function()
    fl.configure { host = false }
    server:stop()
  end)

  it("lets the requests behind it read their replies (no 'timed out', well within the timeout)", function()
    local d = H.luv()
    fl.configure { host = "luv" }
    local l = fl.locker()
    d.spawn(function() assert(l:obtain("closed:warm", 5)):release() end)
    d.run() -- the pool's one connection is open
    -- the first request on it waits on its socket (the reader role) ...
    local reader = coroutine.create(function() l:obtain("closed:reader", 30) end)
    assert(coroutine.resume(reader))
    assert.equal("suspended", coroutine.status(reader))
    local failed, took = {}, 0
    for i = 1, 20 do
      d.spawn(function()
        local t0 = R.now()
        local lock, err = l:obtain("closed:" .. i, 5)
        if not lock then
          failed[#failed + 1] = tostring(err)
          return
        end
        assert(lock:release())
        took = math.max(took, R.now() - t0)
      end)
    end
    -- ... and is closed (a cancelled request) while the others are parked
    assert(coroutine.close(reader))
    d.run()
    fl.configure { host = false }
    assert.same({}, d.errors)
    assert.same({}, failed)
    -- the role is given up by a closed reader within a slice of its wait
    assert.is_true(took < 1.5, ("took %.2f s"):format(took))
  end)
end)
