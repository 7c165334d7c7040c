-- Wake-ups under an event-loop host that must not be lost:
--   * a Redlock call watches every node it waits for, not only the first
--     one (a frozen first node held up the replies of the healthy ones);
--   * a waiter closed while it heads a key's local queue hands its turn on
--     at once (the ones behind it slept until their own deadline);
--   * a coroutine closed while it reads a shared connection for the others
--     (its reader) hands the reading on at once (the others timed out).
-- Everything runs against real redis-servers, in a real luv or cqueues loop.
local R = require "support.redis"
local H = require "support.hosts"
local core = require "fluxalock.core"
local uv = require "luv"

-- poll handles of the luv loop still open (not closing): a wait whose
-- coroutine was closed must not leave its handle watching a socket
local function open_polls()
  local n = 0
  uv.walk(function(h)
    if h:get_type() == "poll" and not h:is_closing() then n = n + 1 end
  end)
  return n
end

describe("a Redlock call under an event-loop host whose first node is frozen", function()
  local servers, fl = {}, nil

  lazy_setup(function()
    for i = 1, 3 do servers[i] = R.start() end
    fl = require "fluxalock"
  end)
  lazy_teardown(function()
    fl.configure { host = false }
    for _, s in ipairs(servers) do if s.pid then s:stop() end end
  end)

  local function urls()
    local u = {}
    for i, s in ipairs(servers) do u[i] = s.url end
    return u
  end

  for _, host in ipairs { "luv", "cqueues" } do
    it("obtains and releases on the majority that answered (" .. host .. ")", function()
      -- a timeout longer than the ttl: a call that waited for the frozen
      -- node before it read the others' replies would use up the whole
      -- validity, and the obtain would fail
      local d = H[host]()
      fl.configure { host = host,
                     pools = { frozen = { redlock = urls(), timeout = 3, connect_timeout = 3 } } }
      local l = fl.locker("frozen")
      local lock, err, ok, rerr, took
      d.spawn(function()
        assert(l:obtain("wk-warm-" .. host, 1)):release() -- connections open before the freeze
        servers[1]:pause() -- SIGSTOP: the first node of the pool
        local t0 = R.now()
        lock, err = l:obtain("wk-frozen-" .. host, 1)
        if lock then ok, rerr = lock:release() end
        took = R.now() - t0
      end)
      local run_ok, run_err = pcall(d.run)
      servers[1]:resume()
      fl.configure { host = false }
      assert(run_ok, run_err)
      assert.same({}, d.errors)
      assert.is_truthy(lock, err)
      assert.is_true(ok, rerr)
      -- the frozen node's timeout is 3 s: obtain and release did not wait for it
      assert.is_true(took < 2.5, ("took %.2f s"):format(took))
      assert.equal(0, open_polls())
    end)
  end
end)

describe("a key's local queue under luv whose head is closed", function()
  local server

  before_each(function() server = R.start() end)
  after_each(function()
    require("fluxalock").configure { host = false }
    server:stop()
  end)

  it("hands the turn to the waiter behind it: the third in line gets the key, not 'not obtained'", function()
    local _, holder, locker = H.luv_held(server, "wk:third")
    local d = H.luv()
    local second, got, err, took
    -- the first waiter gets the key from the holder, and holds it until
    -- the third is waiting behind it
    d.spawn(function()
      local lock = assert(locker:obtain("wk:third", 30, 20))
      -- the second in line is the head now: it is closed before its turn
      assert(coroutine.close(second))
      local deadline = core.now() + 10
      while locker:stats().waiting < 1 and core.now() < deadline do d.sleep(0.005) end
      assert.is_true(lock:release())
    end)
    second = coroutine.create(function() locker:obtain("wk:third", 30, 20) end)
    assert(coroutine.resume(second))
    -- the third in line: parked for its whole wait while it was third
    d.spawn(function()
      local t0 = core.now()
      local lock
      lock, err = locker:obtain("wk:third", 30, 5)
      took = core.now() - t0
      got = lock and lock:release()
    end)
    d.spawn(function() assert.is_true(holder:release()) end)
    d.run()
    assert.same({}, d.errors)
    assert.is_true(got, err)
    -- the key was free from the first waiter's release on
    assert.is_true(took < 2.5, ("took %.2f s"):format(took))
    assert.equal(0, locker:stats().waiting)
  end)

  it("leaves nothing of closed waiters in the loop: no timer runs on for their wait", function()
    local _, holder, locker = H.luv_held(server, "wk:gone")
    -- three waiters: the head mid-try, the second and the third parked
    -- (the third for its whole wait of 20 s)
    local waiters = {}
    for i = 1, 3 do
      waiters[i] = coroutine.create(function() locker:obtain("wk:gone", 30, 20) end)
      assert(coroutine.resume(waiters[i]))
    end
    for i = 3, 1, -1 do assert(coroutine.close(waiters[i])) end
    assert.equal(0, locker:stats().waiting)
    local t0 = core.now()
    uv.run() -- what the closed waiters left in the loop
    local ran = core.now() - t0
    assert.is_true(ran < 5, ("the loop ran %.2f s"):format(ran))
    assert.equal(0, open_polls())
    -- the key is still the holder's; a new waiter gets it once released
    local d = H.luv()
    local got, err, rok, rerr
    d.spawn(function()
      local lock
      lock, err = locker:obtain("wk:gone", 30, 5)
      got = lock and lock:release()
    end)
    d.spawn(function() rok, rerr = holder:release() end)
    d.run()
    assert.same({}, d.errors)
    assert.is_true(rok, rerr)
    assert.is_true(got, err)
  end)
end)

describe("a shared connection under luv whose reader is closed mid-wait", function()
  local server, fl

  setup(function()
    server = R.start()
    fl = R.fluxalock(server, { max_connections = 1, timeout = 3 })
  end)
  teardown(function()
    fl.configure { host = false }
    server:stop()
  end)

  it("hands the reading on: the requests parked behind it get their replies", function()
    local d = H.luv()
    fl.configure { host = "luv" }
    local l = fl.locker()
    d.spawn(function() assert(l:obtain("rc:warm", 5)):release() end)
    d.run() -- the pool's one connection is open
    -- the first request on it waits on its socket for everyone (the reader) ...
    local reader = coroutine.create(function() l:obtain("rc:reader", 30) end)
    assert(coroutine.resume(reader))
    assert.equal("suspended", coroutine.status(reader))
    local failed, took = {}, 0
    for i = 1, 20 do
      d.spawn(function()
        local t0 = R.now()
        local lock, err = l:obtain("rc:" .. i, 5)
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
    -- the timeout is 3 s: nobody waited for the closed reader's time to run out
    assert.is_true(took < 1.5, ("took %.2f s"):format(took))
    assert.equal(0, open_polls())
    -- the closed reader's own request was answered and dropped, and the
    -- lock it took for nobody released (not left to its 30 s ttl)
    assert.equal("0", server:cli("EXISTS", "rc:reader"))
  end)
end)
