-- configure{host = {wait = fn}}: the contract a custom event-loop host
-- implements, checked with a small round-robin scheduler in Lua.  The
-- embedding C program (examples/embed) is run by spec/host_embed_spec.lua.
local R = require "support.redis"

describe("a custom host", function()
  local server, fluxalock, locker
  local waits = 0
  local stuck = 0 -- waits asked for where the coroutine could not yield
  -- the host's wait: yield to the scheduler, which resumes us on its next
  -- round (early, as far as the fd goes: the core checks again)
  local host = { wait = function(fd, events, timeout)
    assert(math.type(fd) == "integer" and fd >= 0, "fd")
    assert(events == "r" or events == "w", "events")
    assert(type(timeout) == "number" and timeout > 0, "timeout")
    waits = waits + 1
    if not coroutine.isyieldable() then stuck = stuck + 1 end
    coroutine.yield("wait")
  end }

  -- run each function in a coroutine until all are dead; returns what
  -- each one yielded, in order
  local function run(...)
    local cos, log = {}, {}
    for i, f in ipairs { ... } do cos[i] = coroutine.create(f) log[i] = {} end
    local deadline = R.now() + 10
    repeat
      local live = 0
      for i, co in ipairs(cos) do
        if coroutine.status(co) == "suspended" then
          local ok, what = coroutine.resume(co)
          assert(ok, what)
          if what then table.insert(log[i], what) end
          if coroutine.status(co) == "suspended" then live = live + 1 end
        end
      end
      if live > 0 then R.sleep(0.0005) end
      assert(R.now() < deadline, "scheduler timed out")
    until live == 0
    return log
  end

  R.setup({ host = host }, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  it("rejects a host it cannot use, naming what is wrong", function()
    assert.has_error(function() fluxalock.configure { host = "tokio" } end, "fluxalock.configure: host: unknown host "
      .. [['tokio' ("cqueues", "luv", "blocking", false, or a table { wait = function })]])
    assert.has_error(function() fluxalock.configure { host = { wiat = function() end } } end,
      "fluxalock.configure: host: unknown key 'wiat' in the host table (only 'wait', 'park', 'unpark')")
    assert.has_error(function() fluxalock.configure { host = { wait = true } } end,
      "fluxalock.configure: host: key 'wait' must be a function wait(fd, events, timeout), got boolean")
    assert.has_error(function() fluxalock.configure { host = 42 } end,
      "fluxalock.configure: host: string, false or table expected, got number")
    -- the configured host is unchanged by a rejected configure
    waits = 0
    run(function() assert(locker:obtain("still-custom", 5)):release() end)
    assert.is_true(waits > 0)
  end)

  it("runs two contenders as coroutines of one thread: the waiter yields until the holder releases", function()
    local order = {}
    waits = 0
    run(function()
      local lock <close> = assert(locker:obtain("duo", 5)) -- luacheck: ignore 211
      order[#order + 1] = "a holds"
      for _ = 1, 20 do coroutine.yield("work") end -- b waits meanwhile
      order[#order + 1] = "a releases"
    end, function()
      coroutine.yield("let a start")
      local lock <close> = assert(locker:obtain("duo", 5, 4)) -- luacheck: ignore 211
      order[#order + 1] = "b holds"
    end)
    assert.same({ "a holds", "a releases", "b holds" }, order)
    assert.is_true(waits > 0)
    assert.equal("0", server:cli("EXISTS", "duo"))
  end)

  it("lets __close yield: a <close> lock is released through the host's wait", function()
    local log = run(function()
      do
        local lock <close> = assert(locker:obtain("closing", 5)) -- luacheck: ignore 211
        coroutine.yield("body done")
      end
      coroutine.yield("after scope")
    end)
    -- the release after "body done" waited through the host (yielded)
    local i = 1
    while log[1][i] ~= "body done" do i = i + 1 end
    assert.equal("wait", log[1][i + 1])
    assert.equal("after scope", log[1][#log[1]])
    assert.equal("0", server:cli("EXISTS", "closing"))
  end)

  it("queues the release of a <close> lock closed where Lua cannot yield (coroutine.close)", function()
    local held
    local co = coroutine.create(function()
      local lock <close> = assert(locker:obtain("abandoned", 60))
      held = lock
      coroutine.yield("holding")
    end)
    repeat
      local ok, what = coroutine.resume(co)
      assert(ok, what)
    until what == "holding"
    assert.equal("1", server:cli("EXISTS", "abandoned"))
    stuck = 0
    assert.is_true(coroutine.close(co)) -- __close runs, not yieldable here
    assert.equal(0, stuck) -- the host was not asked to wait where it cannot
    assert.is_false(held:held())
    -- sent in front of the pool's next request, whoever makes it
    run(function() assert(locker:obtain("next-request", 5)):release() end)
    assert.equal("0", server:cli("EXISTS", "abandoned"))
  end)

  it("turns an error raised by the host's wait into nil, message", function()
    fluxalock.configure { host = { wait = function() error("loop is shutting down", 0) end } }
    local lock, err = locker:obtain("failing-host", 5)
    assert.is_nil(lock)
    assert.equal(("fluxalock: obtain %s: host wait: loop is shutting down"):format(
      server.url:match("//([^/]+)")), err)
    fluxalock.configure { host = host }
  end)

  it("goes back to plain blocking waits with host = false", function()
    fluxalock.configure { host = false }
    waits = 0
    local lock = assert(locker:obtain("plain-again", 5)) -- main thread: no yield needed
    assert.is_true(lock:release())
    assert.equal(0, waits)
    fluxalock.configure { host = host }
  end)
end)

describe("coroutines collected in the middle of a request", function()
  -- 2000 coroutines each start lock:ttl() under a host whose wait yields,
  -- and are dropped there.  A request an abandoned coroutine held stayed
  -- taken until the pool was freed (about 1.5 KB each, for ever in a
  -- long-running host); the collector now gives it back
  it("gives their requests back to the pool (stats().in_flight)", function()
    local server = R.start()
    finally(function() server:stop() end)
    local fl = R.fluxalock(server)
    fl.configure { host = { wait = function() coroutine.yield() end } }
    finally(function() fl.configure { host = false } end)
    local locker = fl.locker()
    local lock
    local co = coroutine.wrap(function() lock = assert(locker:obtain("abandon", 60)) end)
    repeat co() until lock -- the wait yields: resumed until it is done
    local dropped = {}
    for i = 1, 2000 do
      local c = coroutine.create(function() lock:ttl() end)
      assert(coroutine.resume(c)) -- now in the host's wait
      dropped[i] = c
    end
    assert.equal(#dropped, locker:stats().in_flight) -- each holds one
    for i = 1, #dropped do dropped[i] = nil end
    collectgarbage("collect")
    collectgarbage("collect")
    assert.equal(0, locker:stats().in_flight)
    -- and the pool still serves: the late replies went nowhere
    local left
    co = coroutine.wrap(function() left = lock:ttl() end)
    repeat co() until left
    assert.is_true(left > 50, tostring(left))
  end)
end)
