-- fluxalock under a luv (libuv) event loop (configure{host = "luv"}): every
-- network wait and backoff pause yields to the loop.  The scenarios (200
-- coroutines on 10 keys with a heartbeat, a plain process on the same keys,
-- Redis killed and restarted) are in spec/support/hosts.lua, shared with
-- cqueues.
-- the luv host's park: every parked coroutine on one shared timer (first:
-- the loop has nothing else on it yet)
describe("host 'luv': park and unpark", function()
  local uv = require "luv"
  local host = require("fluxalock.host").resolve("luv")
  local function ms_since(t0) return (uv.hrtime() - t0) / 1e6 end
  -- the loop runs until nothing keeps it (or a guard stops it after 10 s)
  local function run()
    local guard = uv.new_timer()
    guard:start(10000, 0, function() uv.stop() end)
    guard:unref()
    uv.run()
    guard:close()
  end

  it("parked coroutines end in the order of their timeouts, none early, then nothing keeps the loop", function()
    local t0, ended = uv.hrtime(), {}
    for i, secs in ipairs { 0.06, 0.02, 0.04 } do
      coroutine.wrap(function()
        host.park({}, secs)
        ended[#ended + 1] = { i = i, ms = ms_since(t0), want = secs * 1000 }
      end)()
    end
    run()
    assert.equal(3, #ended)
    assert.same({ 2, 3, 1 }, { ended[1].i, ended[2].i, ended[3].i })
    for _, e in ipairs(ended) do
      assert.is_true(e.ms >= e.want, ("park %d ended after %.1f ms, before its %d ms"):format(e.i, e.ms, e.want))
    end
    assert.is_true(ms_since(t0) < 5000)
  end)

  it("an unparked coroutine runs at the loop's next turn, and its timeout keeps no loop running", function()
    local key, t0, woke = {}, uv.hrtime(), nil
    coroutine.wrap(function()
      host.park(key, 30)
      woke = ms_since(t0)
    end)()
    host.unpark(key)
    assert.is_nil(woke) -- never from inside unpark
    run()
    assert.is_true(woke ~= nil and woke < 1000)
    assert.is_true(ms_since(t0) < 5000, "the loop ran on for the parked coroutine's 30 s")
  end)

  it("a parked coroutine resumed by someone else is not resumed again when its time comes", function()
    local steps = {}
    local co = coroutine.create(function()
      host.park({}, 0.03)
      steps[#steps + 1] = "back"
      coroutine.yield() -- a wait of its own, not fluxalock's
      steps[#steps + 1] = "resumed"
    end)
    assert(coroutine.resume(co))
    local early, past = uv.new_timer(), uv.new_timer()
    early:start(5, 0, function()
      early:close()
      assert(coroutine.resume(co))
    end)
    past:start(100, 0, function() past:close() end) -- the loop runs past the park's 30 ms
    run()
    assert.same({ "back" }, steps)
  end)
end)

require("support.hosts").spec("luv",
  "cannot wait outside a coroutine under host 'luv'", _ENV)

-- issue 17, item 8: the __gc of a pool's last reference must not wait for
-- its deferred releases' answers inside the loop
describe("host 'luv': a pool collected with deferred releases", function()
  local R = require "support.redis"
  local H = require "support.hosts"
  local core = require "fluxalock.core"
  local server

  R.setup({ module = false }, function(e) server = e.server end)

  it("does not stall the loop when its server is frozen; the release still goes out", function()
    local TIMEOUT = 2
    local d = H.luv()
    local done = false
    local hb = H.heartbeat(d, 0.005, function() return not done end)
    d.spawn(function()
      local keep = { pool = core.pool { host = "127.0.0.1", port = server.port, timeout = TIMEOUT } }
      keep.pool:sethost(require("fluxalock.host").resolve("luv"))
      keep.lock = assert(keep.pool:obtain("gc:frozen", 30000)) -- its link is open and idle
      server:pause() -- SIGSTOP: nothing it is sent gets an answer
      d.sleep(0.05)
      -- the lock's __gc defers its release (a host is set); the pool's
      -- last reference goes with it: the pool's __gc flushes the release
      keep.pool, keep.lock = nil, nil
      collectgarbage()
      collectgarbage()
      d.sleep(0.2) -- the heartbeat goes on beating for a while
      done = true
    end)
    d.run()
    server:resume()
    assert.same({}, d.errors)
    assert.is_true(hb.beats > 5, "heartbeat ran " .. hb.beats .. " times")
    assert.is_true(hb.max < TIMEOUT / 2, ("heartbeat delayed %.0f ms (timeout %g s)"):format(hb.max * 1000, TIMEOUT))
    -- written to the socket before the pool went: the server runs it once thawed
    R.until_true(function() return server:cli("EXISTS", "gc:frozen") == "0" end, 10, "the deferred release")
  end)
end)

-- luv's poll handle reports a socket in an error state (POLLERR: the
-- server's reset) as UV_EBADF, and luv prints "EBADF: bad file descriptor"
-- to stderr before any Lua code runs.  The core never hands the host a
-- socket that can end so: a reset comes back as the request's failure, and
-- the program's output has no stray line.
describe("host 'luv': a server that resets the connection a request waits on", function()
  local R = require "support.redis"

  it("fails the request with the reset, and nothing is printed", function()
    local server = R.start()
    -- the child holds an idle pooled connection, freezes the server, sends
    -- an obtain (it stays unread in the server's socket), then kills the
    -- server: the kernel answers unread bytes with a reset
    local proc = R.child([[
      local uv = require "luv"
      local pid = os.getenv("PID")
      assert(locker:obtain("reset:warm", 30)) -- the connection, now idle
      fluxalock.configure { host = "luv" }
      local l2 = fluxalock.locker()
      assert(os.execute("kill -STOP " .. pid))
      local res
      coroutine.wrap(function()
        local lock, err = l2:obtain("reset", 30)
        res = tostring(lock) .. " " .. tostring(err)
      end)() -- sent; now waiting in the loop's poll
      assert(os.execute("kill -KILL " .. pid .. "; kill -CONT " .. pid))
      uv.run()
      print("result " .. tostring(res))
    ]], { URL = server.url, PID = tostring(server.pid), TIMEOUT = "2" })
    local out = proc:wait(30)
    server.pid = nil
    assert.matches("result nil fluxalock: obtain 127%.0%.0%.1:%d+: ", out)
    assert.is_nil(out:find("EBADF", 1, true), out)
    assert.equal(1, select(2, out:gsub("\n", "\n")), out) -- the result line alone
  end)
end)

-- a Redlock obtain abandoned with one node's answer in (obtained) and two
-- nodes frozen: every node's key goes back at once, not at its ttl
describe("host 'luv': a Redlock obtain whose coroutine is closed mid-request", function()
  local R = require "support.redis"
  local H = require "support.hosts"

  it("releases the node that said obtained and the ones still answering", function()
    local servers, urls = R.servers(3)
    local luv, waits = require("fluxalock.host").resolve("luv"), 0
    local fl = require "fluxalock"
    fl.configure { pools = { default = { redlock = urls, timeout = 2, connect_timeout = 2 } },
                   host = { wait = function(...) waits = waits + 1 return luv.wait(...) end,
                            park = luv.park, unpark = luv.unpark } }
    local locker = fl.locker()
    local d = H.luv()
    d.spawn(function()
      assert(assert(locker:obtain("rl-orphan:warm", 5)):release()) -- every node's connection open
      -- node 1 answers late once: a majority answered without it, and its
      -- connection keeps the late replies of nobody, unread (not idle)
      servers[1]:pause()
      assert(assert(locker:obtain("rl-orphan:late", 5)):release())
      servers[1]:resume()
      servers[2]:pause()
      servers[3]:pause()
      waits = 0
      local co = coroutine.create(function() return locker:obtain("rl-orphan", 30) end)
      assert(coroutine.resume(co)) -- sent to all three; waiting for them
      -- the real signal: the first wait ended (node 1 answered: obtained)
      -- and the call waits again, for the two frozen nodes
      while waits < 2 do d.sleep(0.005) end
      assert.equal("suspended", coroutine.status(co))
      assert(coroutine.close(co))
    end)
    d.run()
    servers[2]:resume()
    servers[3]:resume()
    local ok, err = pcall(R.until_true, function()
      for i = 1, 3 do
        if servers[i]:cli("PTTL", "rl-orphan") ~= "-2" then return false end
      end
      return true
    end, 5, "every node's key released (the ttl is 30 s)")
    local pttl = {}
    for i = 1, 3 do pttl[i] = servers[i]:cli("PTTL", "rl-orphan") end
    for i = 1, 3 do servers[i]:stop() end
    fl.configure { host = false }
    assert.same({}, d.errors)
    assert(ok, tostring(err) .. ": " .. table.concat(pttl, " "))
  end)
end)
