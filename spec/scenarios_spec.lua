-- The reference scenarios of the API contract, with the contenders as real
-- OS processes.  Children print "EVENT <monotonic seconds> [detail]" lines;
-- CLOCK_MONOTONIC is one clock for every process of the machine, so the
-- events of A and B can be put in order.
local R = require "support.redis"

-- a child that talks to 'url' and can print timed events (event())
local function child(url, body) return R.child(body, { URL = url }) end
local events = R.events

describe("the reference scenarios", function()
  local server, locker
  R.setup({}, function(e) server, locker = e.server, e.locker end)

  -- A obtains test_lock and holds it until the spec sets test_lock:go (a
  -- Redis key), never for a guessed time: a loaded machine's slow start of
  -- B must not find the lock already free
  local function holder_a()
    return R.child([[
      event("GETTING_A")
      local lock = assert(locker:obtain("test_lock", 60, 0))
      event("GOT_A")
      repeat core.sleep(0.005) until witness:call { "EXISTS", "test_lock:go" } == 1
      event("RELEASING_A")
      assert(lock:release() == true)
      event("RELEASED_A")
    ]], { URL = server.url, WITNESS = tostring(server.port) })
  end

  -- A holds test_lock; once it does, B obtains it with 'wait' (and releases
  -- what it got).  A lets go once B is done (wait 0) or blocked on its
  -- wake-up list (wait > 0); A's and B's events
  local function a_then_b(wait)
    local a = holder_a()
    R.until_true(function() return server:cli("EXISTS", "test_lock") == "1" end, 10, "A holding")
    local b = child(server.url, ([[
      event("GETTING_B")
      local lock, err = locker:obtain("test_lock", 60, %s)
      event("DONE_B", tostring(lock) .. "|" .. tostring(err))
      if lock then lock:release() end
    ]]):format(wait))
    local out
    if wait == 0 then
      out = b:wait(20)
    else
      R.until_true(function() return server:blocked() > 0 end, 20, "B waiting")
    end
    server:cli("SET", "test_lock:go", "1")
    local eb = events(out or b:wait(20))
    local ea = events(a:wait(20))
    server:cli("DEL", "test_lock:go")
    assert.truthy(ea.RELEASED_A, "A did not finish")
    assert.truthy(eb.DONE_B, "B did not finish")
    return ea, eb
  end

  it("1. non-blocking: B gets nil, 'not obtained' at once while A holds the lock", function()
    local ea, eb = a_then_b(0)
    assert.equal("nil|not obtained", eb.DONE_B.detail)
    -- B answered while A still held the lock, and did not wait for it
    assert.is_true(eb.DONE_B.t < ea.RELEASING_A.t)
    assert.is_true(eb.DONE_B.t - eb.GETTING_B.t < 1, "B took " .. (eb.DONE_B.t - eb.GETTING_B.t))
    assert.equal("0", server:cli("EXISTS", "test_lock"))
  end)

  it("2. waiting: B (wait 5) obtains the lock shortly after A releases it", function()
    local ea, eb = a_then_b(5)
    assert.equal("fluxalock.Lock: test_lock (held)|nil", eb.DONE_B.detail)
    -- B was already waiting when A released, and got it only after that
    assert.is_true(eb.GETTING_B.t < ea.RELEASING_A.t, "B started after A's release")
    assert.is_true(eb.DONE_B.t >= ea.RELEASING_A.t, "B got the lock before A released it")
    -- shortly after: woken by the release, not by the end of its wait
    local late = eb.DONE_B.t - ea.RELEASED_A.t
    assert.is_true(late < 1, ("B obtained %.3f s after the release"):format(late))
    assert.equal("0", server:cli("EXISTS", "test_lock"))
  end)

  it("3. TTL and refresh: 5, about 4, about 3, refresh(2), about 5", function()
    local lock = assert(locker:obtain("ttl_lock", 5))
    local t0 = R.now()
    -- each reading is compared with the time that really passed
    local function near(expected, got)
      assert.is_true(math.abs(got - expected) < 0.25,
        ("ttl %.3f, expected about %.3f"):format(got, expected))
    end
    near(5, assert(lock:ttl()))
    R.sleep(1)
    near(5 - (R.now() - t0), assert(lock:ttl())) -- about 4
    R.sleep(1)
    local left = assert(lock:ttl())
    near(5 - (R.now() - t0), left) -- about 3
    assert.is_true(lock:refresh(2))
    near(left + 2, assert(lock:ttl())) -- about 5
    assert.is_true(lock:release())
  end)

  it("4. wait > ttl is an error", function()
    local ok, err = pcall(function() local l = locker:obtain("test_lock", 1, 5) return l end)
    assert.is_false(ok)
    assert.matches("bad argument #3 to 'obtain' %(wait timeout must not exceed ttl%)$", err)
  end)

  describe("5. a release after the lock was lost", function()
    it("returns false after expiry and never deletes the next holder's lock", function()
      local a = assert(locker:obtain("lost_lock", 0.1))
      R.until_true(function() return server:cli("EXISTS", "lost_lock") == "0" end, 5, "expiry")
      -- the next holder is another process
      local b = child(server.url, [[
        local lock = assert(locker:obtain("lost_lock", 30))
        event("GOT_B", lock:token())
        io.stdout:flush()
        os.exit(0, false) -- leave it held
      ]])
      local tok = events(b:wait(20)).GOT_B.detail
      assert.equal(tok, server:cli("GET", "lost_lock"))
      assert.is_false(a:release())
      assert.is_false(a:release())
      assert.equal(tok, server:cli("GET", "lost_lock"))
      assert.is_false(a:refresh(1))
      assert.equal(0, a:ttl())
      local pttl = tonumber(server:cli("PTTL", "lost_lock"))
      assert.is_true(pttl > 20000, "the new holder's expiry was touched: " .. pttl)
      server:cli("DEL", "lost_lock")
    end)

    it("returns false after a takeover (key deleted and re-obtained) and spares the new lock", function()
      local a = assert(locker:obtain("taken_lock", 30))
      server:cli("DEL", "taken_lock") -- e.g. an operator, or a failover that lost the key
      local b = assert(locker:obtain("taken_lock", 30))
      assert.is_false(a:release())
      assert.is_false(a:held())
      assert.is_true(b:held())
      assert.equal(b:token(), server:cli("GET", "taken_lock"))
      assert.is_true(b:release())
    end)
  end)
end)

describe("a waiting obtain", function()
  local server, fluxalock, locker
  R.setup({}, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  it("returns 'not obtained' at its deadline, not much later", function()
    local holder = assert(locker:obtain("deadline", 10))
    for _, wait in ipairs { 0.05, 0.3 } do
      local took, lock, err = R.timed(locker.obtain, locker, "deadline", 10, wait)
      assert.is_nil(lock)
      assert.equal("not obtained", err)
      assert.is_true(took >= wait - 0.002, ("gave up after %.3f s of %.3f"):format(took, wait))
      assert.is_true(took < wait + 0.5, ("returned %.3f s after a %.3f s deadline"):format(took - wait, wait))
    end
    holder:release()
  end)

  -- a locker whose backoff step (5 s) is longer than any wait below: only a
  -- wake-up or the last try at the deadline can get it the lock in time
  local function slow_locker() return fluxalock.locker { url = server.url, retry_step = 5, retry_max = 5 } end

  it("never sleeps past the deadline, however long its backoff step", function()
    local slow = slow_locker()
    local holder = assert(slow:obtain("deadline-slow", 10))
    local took, lock, err = R.timed(slow.obtain, slow, "deadline-slow", 10, 0.2)
    assert.is_nil(lock)
    assert.equal("not obtained", err)
    assert.is_true(took < 0.2 + 0.5, ("took %.3f s with a 0.2 s wait"):format(took))
    holder:release()
  end)

  it("makes a last try at the deadline (a lock that expired meanwhile is obtained)", function()
    -- one backoff step longer than the whole wait: after its first try the
    -- waiter only wakes at the deadline; an expiry sends no wake-up, so only
    -- the last try can find the key free
    local slow = slow_locker()
    local holder = assert(slow:obtain("deadline-last", 0.2))
    local took, lock, err = R.timed(slow.obtain, slow, "deadline-last", 10, 0.5)
    assert.is_nil(err)
    assert.truthy(lock, "no last try at the deadline")
    assert.is_true(took >= 0.15, ("obtained after %.3f s, before the holder expired"):format(took))
    assert.is_true(took < 0.5 + 0.5)
    assert.is_false(holder:release())
    assert.is_true(lock:release())
  end)

  it("is woken by a release in another process long before its backoff would retry", function()
    local slow = slow_locker()
    local p = R.child([[
      local lock = assert(locker:obtain("woken", 30))
      event("GOT")
      -- hold until the parent is waiting: blocked on the wake-up list
      local function blocked()
        return (witness:call { "CLIENT", "LIST" } or ""):find(" flags=%a*b[^\n]- cmd=blpop") ~= nil
      end
      while not blocked() do core.sleep(0.005) end
      assert(witness:call { "GET", "woken" } == lock:token(), "the holder's value was touched")
      event("RELEASING")
      lock:release()
    ]], { URL = server.url, WITNESS = server.port })
    R.until_true(function() return server:cli("EXISTS", "woken") == "1" end, 10, "child holding")
    local lock, err = slow:obtain("woken", 10, 8)
    local got = R.now()
    local e = events(p:wait(20))
    assert.is_nil(err)
    assert.truthy(lock)
    assert.is_true(got >= e.RELEASING.t)
    assert.is_true(got - e.RELEASING.t < 1, ("woken %.3f s after the release"):format(got - e.RELEASING.t))
    lock:release()
  end)
end)
