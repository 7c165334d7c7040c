-- Many coroutines, few connections (API.md, "Many coroutines, few
-- connections"): under a host, a pool carries any number of coroutines
-- over at most max_connections (+ 1 for wake-ups) connections to a
-- server, its waiters get a key in the order they came, and nothing a
-- coroutine or the server does to one request holds up the others.
--
-- Connections are counted by the server: a separate process samples CLIENT
-- LIST while the coroutines run (spec/support/scale.lua).  Every stampede
-- gets its own redis-server, so no other pool's connections are counted.
local R = require "support.redis"
-- the helper beside this file (also when the file is run from another checkout)
local HERE = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
local S = dofile(HERE .. "support/scale.lua")
local BIG = 60 -- ttl and wait of the stampedes: generous, a slow machine must not fail correct code

-- a failure message with the sampler's report: the clients it saw at its
-- peak, one short line each, "+" before those it counted
local function report(s)
  local lines = {}
  for line in (s.report or ""):gmatch("[^\n]+") do
    if #lines < 40 and not line:find("^sampler ") then
      local short = { line:match("^[+-] ") or "" }
      for _, f in ipairs { "addr", "name", "age", "flags", "cmd" } do
        local v = line:match(" " .. f .. "=(%S*)")
        if v then short[#short + 1] = f .. "=" .. v .. " " end
      end
      lines[#lines + 1] = #short > 1 and table.concat(short) or line
    end
  end
  return ("most connections seen %s in %s samples%s; clients then:\n%s"):format(tostring(s.max),
    tostring(s.samples), s.tripped and " (the server was stopped at the first sample over the bound)" or "",
    table.concat(lines, "\n"))
end

-- the checks of one stampede: all obtained and released, no overlap in Lua
-- or in Redis, and the server never saw more than 'bound' connections
local function check_stampede(assert, st, s, n, bound)
  assert.is_true(s.max <= bound, report(s))
  assert.is_true(st.finished, "the loop was still running after its limit")
  assert.same({}, st.errors)
  assert.same({}, st.failed)
  assert.same({}, st.bad)
  assert.equal(n, st.obtained)
  assert.equal(n, st.released)
  assert.equal(0, st.overlaps)
  assert.equal(1, st.most_inside) -- INCR inside the critical section never saw another holder
  -- the sampler really watched this pool: it saw it connected, more than once
  assert.is_true(s.max >= 1, report(s))
  assert.is_true(s.samples >= 3, report(s))
end

-- the stampede, as the child process runs it; a pool's timeout is 10 s
-- unless the case gives one (a request's timeout counts from its call: the
-- tail of a long queue on a loaded machine's ASan build passed 1 s)
local STAMPEDE = [[
  local pool = ARGS.pool or {}
  if pool.timeout == nil then pool.timeout = 10 end
  local d, _, locker = S.hosted(SERVER, ARGS.host, pool)
  return S.stampede(d, locker, S.counter(SERVER, d), ARGS)
]]

-- run a scenario in a child process against a fresh server while the
-- sampler counts connections; returns the scenario's result and the
-- sampler.  The bound is checked first: over it, the sampler stops the
-- server, and whatever else then failed is a consequence.
local function sampled(body, args, bound, limit)
  local server = R.start()
  local sampler
  local ok, res = pcall(function()
    sampler = S.sampler(server, bound)
    return S.child(server, body, args, limit)
  end)
  if sampler then sampler.stop() end
  server:stop()
  if sampler then assert(sampler.max <= bound, report(sampler)) end
  assert(ok, res)
  return res, sampler
end

local function stampede(host, pool, opts, bound)
  opts.host, opts.pool = host, pool
  return sampled(STAMPEDE, opts, bound)
end

describe("many coroutines, few connections", function()
  for _, name in ipairs { "luv", "cqueues" } do
    describe("under host '" .. name .. "'", function()
      -- n coroutines on k keys, pool options, the most connections allowed.
      -- A request's timeout counts from its call: 5000 requests queued on
      -- one connection of an ASan build on a loaded machine took more than
      -- the default 1 s at the tail, though the server answered all along.
      -- What is checked here is connections and that all obtain: 10 s
      for _, c in ipairs {
        { "2000 coroutines on one key, each holding it 1 ms: all obtain, one at a time, "
          .. "over at most 5 connections (the default max_connections = 4, + 1)", 2000, 1, { timeout = 10 }, 5 },
        { "2000 coroutines on one key with max_connections = 1: at most 2 connections",
          2000, 1, { max_connections = 1, timeout = 10 }, 2 },
        { "5000 coroutines on 5000 keys: all obtain, at most 5 connections", 5000, 5000, { timeout = 10 }, 5 },
        { "5000 coroutines on 5000 keys with max_connections = 1: at most 2 connections",
          5000, 5000, { max_connections = 1, timeout = 10 }, 2 },
      } do
        local title, n, k, pool, bound = table.unpack(c, 1, 5)
        it(title, function()
          local st, s = stampede(name, pool, { n = n, k = k, ttl = BIG, wait = BIG }, bound)
          check_stampede(assert, st, s, n, bound)
        end)
      end
    end)
  end

  -- 10 keys: the scheduler resumes every coroutine each round, so one key's
  -- hand-overs are paced by rounds; ten keys keep the spec's time short
  it("a custom host ({ wait = fn }, a round-robin scheduler): 1000 coroutines on 10 keys, "
    .. "at most 5 connections", function()
    local st, s = sampled([[
      local d = S.custom()
      local fl = R.fluxalock(SERVER, { timeout = 10 }) -- (as STAMPEDE)
      fl.configure { host = d.host }
      local st = S.stampede(d, fl.locker(), S.counter(SERVER, d), ARGS)
      st.waits = d.waits
      return st
    ]], { n = 1000, k = 10, ttl = BIG, wait = BIG }, 5)
    check_stampede(assert, st, s, 1000, 5)
    assert.is_true(st.waits > 0, "the host's wait was never called")
  end)

  it("examples/embed (a C program's own poll loop): 1000 coroutines on one key, at most 5 connections", function()
    local out, ok = R.sh("make --no-print-directory examples 2>&1")
    assert(ok, out)
    local dir = R.tmpdir("embed")
    local script = dir .. "/stampede.lua"
    local f = assert(io.open(script, "w"))
    f:write [[
      -- luacheck: read globals embed
      local lock <close>, err = require("fluxalock").locker():obtain("embed:stampede", 60, 60)
      if not lock then error(tostring(err)) end
      embed.enter("stampede")
      embed.sleep(0.001)
      embed.leave("stampede")
    ]]
    f:close()
    local server = R.start()
    local sampler, code
    local run, err = pcall(function()
      sampler = S.sampler(server, 5)
      local o, _, c = R.sh(("FLUXALOCK_URL=%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' "
        .. "timeout 180 examples/embed/embed -n 1000 %s 2>&1"):format(R.quote(server.url), R.quote(script)))
      out, code = o, c
    end)
    if sampler then sampler.stop() end
    server:stop()
    R.sh("rm -rf " .. R.quote(dir))
    assert(run, err)
    assert.is_true(sampler.max <= 5, report(sampler))
    -- its own summary first (a failed run prints an error per coroutine)
    local summary = out:match("embed: %d+ coroutines[^\n]*") or "(no summary)"
    assert.equal(0, code, summary .. "\n" .. out:sub(1, 2000))
    assert.matches("embed: 1000 coroutines, 0 failed, 1000 critical sections, 0 overlaps", summary)
    assert.is_true(sampler.max >= 1 and sampler.samples >= 3, report(sampler))
  end)

  -- waiters arrive 10 ms apart on a held key; the fifth gives up after
  -- 0.3 s, before the holder releases.  The holder is in this process, or
  -- in another (a plain process, released when the waiters say so)
  local FIFO = [[
    local d, _, locker = S.hosted(SERVER, ARGS.host)
    local order, res = {}, {}
    d.spawn(function()
      local holder = not ARGS.release and assert(locker:obtain("fifo", 60))
      for i = 1, ARGS.n do
        d.spawn(function()
          local wait = i == ARGS.short and 0.3 or 60
          local t0 = core.now()
          local lock, err = locker:obtain("fifo", 60, wait)
          res[i] = { ok = lock ~= nil, err = err, took = core.now() - t0 }
          if lock then
            order[#order + 1] = i
            d.sleep(0.001)
            res[i].released = lock:release()
          end
        end)
        -- arrivals 10 ms apart: this is the order the waiters come in
        d.sleep(0.01)
      end
      while not res[ARGS.short] do d.sleep(0.01) end -- the real signal: it gave up
      if holder then holder:release() else io.open(ARGS.release, "w"):close() end
    end)
    return { finished = d.run(120), order = order, res = res, errors = d.errors }
  ]]
  local HOLDER = [[
    local core = require "fluxalock.core"
    local fluxalock = require "fluxalock"
    fluxalock.configure { pools = { default = { path = os.getenv("SOCK") } } }
    local lock = assert(fluxalock.locker():obtain("fifo", 60))
    io.open(os.getenv("READY"), "w"):close()
    local f
    repeat core.sleep(0.005) f = io.open(os.getenv("RELEASE")) until f
    f:close()
    print("holder released=" .. tostring(lock:release()))
  ]]
  for _, name in ipairs { "luv", "cqueues" } do
    for _, where in ipairs { "this process", "another process" } do
      it(("under host '%s', waiters of one key held in %s get it in the order they came, "
        .. "except one whose own wait ran out"):format(name, where), function()
        local server = R.start()
        local holder
        local ok, res = pcall(function()
          local args = { host = name, n = 20, short = 5 }
          if where == "another process" then
            args.release = server.dir .. "/release"
            holder = R.spawn(HOLDER, { SOCK = server.socket, READY = server.dir .. "/ready", RELEASE = args.release })
            R.until_true(function()
              local f = io.open(server.dir .. "/ready")
              if f then f:close() end
              return f ~= nil or not R.alive(holder.pid)
            end, 20, "the holder process to obtain the lock")
          end
          return S.child(server, FIFO, args)
        end)
        local held = holder and holder:wait(30)
        server:stop()
        assert(ok, res)
        if holder then assert.matches("holder released=true", held) end
        assert.is_true(res.finished)
        assert.same({}, res.errors)
        local want = {}
        for i = 1, 20 do if i ~= 5 then want[#want + 1] = i end end
        assert.same(want, res.order)
        assert.is_false(res.res[5].ok)
        assert.equal("not obtained", res.res[5].err)
        assert.is_true(res.res[5].took >= 0.3 and res.res[5].took < 10, "gave up after " .. res.res[5].took)
        for _, i in ipairs(want) do assert.is_true(res.res[i].released) end
      end)
    end
  end

  for _, name in ipairs { "luv", "cqueues" } do
    it("under host '" .. name .. "', Redis SIGKILLed mid-stampede: every call ends within its own "
      .. "deadline with nil, 'fluxalock: ...'; after a restart the same pool serves a stampede again", function()
      local server = R.start()
      local sampler, h
      local ok, res = pcall(function()
        h = S.spawn_child(server, [[
          local d, _, locker = S.hosted(SERVER, ARGS.host,
            { timeout = ARGS.timeout, connect_timeout = ARGS.timeout })
          local calls, obtained, inside, overlaps = {}, 0, 0, 0
          for _ = 1, ARGS.n do
            d.spawn(function()
              local t0 = core.now()
              local lock, err = locker:obtain("storm", 60, ARGS.wait)
              calls[#calls + 1] = { op = "obtain", took = core.now() - t0, ok = lock ~= nil, err = err }
              if not lock then return end
              obtained, inside = obtained + 1, inside + 1
              if inside > 1 then overlaps = overlaps + 1 end
              if obtained == ARGS.kill_after then os.execute("kill -KILL " .. SERVER.pid) end
              d.sleep(0.001)
              inside = inside - 1
              local t1 = core.now()
              local rok, rerr = lock:release()
              calls[#calls + 1] = { op = "release", took = core.now() - t1, ok = rok, err = rerr }
            end)
          end
          local finished = d.run(ARGS.wait + 60)
          -- the parent restarts the server on the same port, then says so
          local f
          repeat core.sleep(0.01) f = io.open(ARGS.restarted) until f
          f:close()
          local again = S.stampede(d, locker, S.counter(SERVER, d), { n = 300, k = 1, prefix = "again:" })
          return { finished = finished, calls = calls, obtained = obtained, overlaps = overlaps,
            errors = d.errors, again = again }
        ]], { host = name, n = 500, wait = 3, timeout = 0.5, kill_after = 50,
              restarted = server.dir .. "/restarted" })
        R.until_true(function() return not R.alive(server.pid) end, 60, "the stampede to kill redis-server")
        server:stop() -- already dead: this waits for its port to close
        server:restart()
        sampler = S.sampler(server, 5)
        io.open(server.dir .. "/restarted", "w"):close()
        return h:result(180)
      end)
      if not ok and h then h.proc:signal("KILL") end
      if sampler then sampler.stop() end
      server:stop()
      assert(ok, res)
      assert.is_true(res.finished, "the loop still ran long after every deadline")
      assert.same({}, res.errors)
      assert.equal(0, res.overlaps)
      assert.is_true(res.obtained >= 50)
      local failed, n_obtain = 0, 0
      for _, c in ipairs(res.calls) do
        -- its deadline (the obtain's wait), one command's timeout and one
        -- connect_timeout (a request started at the deadline), and 1 s slack
        local limit = (c.op == "obtain" and 3 or 0) + 0.5 + 0.5 + 1
        assert.is_true(c.took <= limit, ("%s took %.2f s (limit %.2f s)"):format(c.op, c.took, limit))
        if c.op == "obtain" then
          n_obtain = n_obtain + 1
          -- nil, "not obtained" only for a wait that really ran out
          if not c.ok and not (c.err == "not obtained" and c.took >= 3) then
            assert.matches("^fluxalock: ", c.err)
            failed = failed + 1
          end
        elseif c.ok ~= true then -- a release: true before the kill, else nil, "fluxalock: ..."
          assert.is_nil(c.ok, "release returned " .. tostring(c.ok))
          assert.matches("^fluxalock: ", c.err)
        end
      end
      assert.equal(500, n_obtain)
      assert.is_true(failed > 0, "no obtain failed: the server was not killed mid-stampede")
      -- recovered: the same pool, a new stampede, within the bound
      check_stampede(assert, res.again, sampler, 300, 5)
    end)
  end

  -- Redis stops answering (SIGSTOP) with requests on the pool's only
  -- connection: each of them ends by its own deadline; once Redis answers
  -- again, their late replies must not be taken for later requests' answers
  local STALL = [[
    local d, fl, locker = S.hosted(SERVER, ARGS.host, { max_connections = 1, timeout = 0.5, connect_timeout = 0.5 })
    local res = { stalled = {}, after = 0, bad = {} }
    local function bad(what) if #res.bad < 10 then res.bad[#res.bad + 1] = what end end
    d.spawn(function()
      for i = 1, 20 do -- the connection is open and in use
        local lock = assert(locker:obtain("warm:" .. i, 10))
        assert(lock:release())
      end
      os.execute("kill -STOP " .. SERVER.pid)
      for i = 1, ARGS.n do
        d.spawn(function()
          local t0 = core.now()
          local lock, err = locker:obtain("stalled:" .. i, 30)
          res.stalled[#res.stalled + 1] = { ok = lock ~= nil, err = err, took = core.now() - t0 }
        end)
      end
      while #res.stalled < ARGS.n do d.sleep(0.01) end -- the real signal: every one returned
      os.execute("kill -CONT " .. SERVER.pid)
      for i = 1, ARGS.n do
        d.spawn(function()
          local lock, err = locker:obtain("after:" .. i, 12)
          if not lock then bad("obtain: " .. tostring(err)) return end
          -- its own answer: ttl 12 s (a stalled request's reply would be
          -- "OK", a number of another key, or nil)
          local left, terr = lock:ttl()
          if not (type(left) == "number" and left > 9 and left <= 12) then
            bad("ttl: " .. tostring(left) .. " " .. tostring(terr))
          end
          local rok, rerr = lock:release()
          if rok ~= true then bad("release: " .. tostring(rok) .. " " .. tostring(rerr)) end
          res.after = res.after + 1
        end)
      end
    end)
    res.finished = d.run(60)
    res.errors = d.errors
    return res
  ]]
  for _, name in ipairs { "luv", "cqueues" } do
    it("under host '" .. name .. "', Redis stalled past the timeout: the stalled calls end by their own "
      .. "deadline, and their late replies never answer a later call", function()
      local server = R.start()
      local ok, res = pcall(S.child, server, STALL, { host = name, n = 50 })
      server:stop() -- also resumes a server left stopped
      assert(ok, res)
      assert.is_true(res.finished)
      assert.same({}, res.errors)
      assert.equal(50, #res.stalled)
      for _, c in ipairs(res.stalled) do
        assert.is_false(c.ok)
        assert.matches("^fluxalock: ", c.err)
        -- its deadline is its command timeout, 0.5 s; 1 s of slack
        assert.is_true(c.took <= 1.5, ("a stalled call took %.2f s"):format(c.took))
      end
      assert.same({}, res.bad)
      assert.equal(50, res.after)
    end)
  end

  -- the abandoned coroutine is resumed until its first wait in the host
  -- (its request is on the pool's only connection), then 'fate' is applied
  local ABANDON = [[
    local d = S.custom()
    local fl = R.fluxalock(SERVER, { max_connections = 1 })
    fl.configure { host = d.host }
    local locker = fl.locker()
    local lost = coroutine.create(function() locker:obtain("abandoned", 30) end)
    local first = d.step(lost)
    if ARGS.fate == "closed" then
      assert(coroutine.close(lost))
    elseif ARGS.fate == "collected" then
      lost = nil -- luacheck: ignore 311
      collectgarbage() collectgarbage()
    end -- "never resumed": it stays suspended, referenced, forever
    local res = { first = first, done = 0, bad = {} }
    local t0 = core.now()
    for i = 1, 200 do
      d.spawn(function()
        local lock, err = locker:obtain("others:" .. (i % 20), 12, 10)
        if not lock then res.bad[#res.bad + 1] = "obtain: " .. tostring(err) return end
        -- its own answer, not another request's: ttl 12 s, not the abandoned one's 30
        local left, terr = lock:ttl()
        if not (type(left) == "number" and left > 9 and left <= 12) then
          res.bad[#res.bad + 1] = "ttl: " .. tostring(left) .. " " .. tostring(terr)
        end
        d.sleep(0.001)
        local rok, rerr = lock:release()
        if rok ~= true then res.bad[#res.bad + 1] = "release: " .. tostring(rok) .. " " .. tostring(rerr) end
        res.done = res.done + 1
      end)
    end
    res.finished = d.run(60)
    res.took = core.now() - t0
    res.errors = d.errors
    return res
  ]]
  for _, fate in ipairs { "never resumed", "closed", "collected" } do
    it("a coroutine abandoned mid-request (" .. fate .. ") does not hold up the others on its connection", function()
      local server = R.start()
      local ok, res = pcall(S.child, server, ABANDON, { fate = fate:match("%a+$") })
      server:stop()
      assert(ok, res)
      assert.equal("host wait", res.first) -- it was inside its request, waiting in the host
      assert.is_true(res.finished)
      assert.same({}, res.errors)
      assert.same({}, res.bad)
      assert.equal(200, res.done)
      -- each waited at most 10 s; all of them together must not need longer
      assert.is_true(res.took < 20, ("took %.1f s"):format(res.took))
    end)
  end

  it("plain processes and a luv process contend for the same keys: no overlap, within the bound", function()
    local server = R.start()
    local sampler, plains, st = nil, {}, nil
    local ok, err = pcall(function()
      sampler = S.sampler(server, 5)
      for i = 1, 2 do plains[i] = S.plain(server, "mixed:", 10) end
      st = S.child(server, STAMPEDE, { host = "luv", n = 1000, k = 10, prefix = "mixed:", ttl = BIG, wait = BIG })
    end)
    local plain = {}
    for i, p in ipairs(plains) do plain[i] = p.stop() end
    if sampler then sampler.stop() end
    server:stop()
    assert(ok, err)
    check_stampede(assert, st, sampler, 1000, 5)
    for _, p in ipairs(plain) do
      assert.truthy(p.done, p.out)
      assert.is_true(p.done > 0, p.out)
      assert.equal(0, p.overlaps, p.out)
      assert.equal(0, p.errors, p.out)
    end
  end)
end)

describe("many coroutines, few connections per node", function()
  for _, max in ipairs { 4, 1 } do
    it(("a Redlock pool of 3 servers under host 'luv' (max_connections = %d): 600 coroutines on 6 keys, "
      .. "at most %d connections to each server"):format(max, max + 1), function()
      local servers, samplers = {}, {}
      local ok, st = pcall(function()
        local urls = {}
        for i = 1, 3 do
          servers[i] = R.start()
          urls[i] = servers[i].url
        end
        for i = 1, 3 do samplers[i] = S.sampler(servers[i], max + 1) end
        return S.child(servers[1], [[
          local d = S.drivers.luv()
          local fl = require "fluxalock"
          -- timeout 10: as in the stampedes above (a request's timeout counts from its call)
          fl.configure { host = d.host, pools = { default = { redlock = ARGS.urls, max_connections = ARGS.max,
            timeout = 10 } } }
          return S.stampede(d, fl.locker(), S.counter(SERVER, d), ARGS)
        ]], { urls = urls, max = max ~= 4 and max or nil, n = 600, k = 6, ttl = BIG, wait = BIG })
      end)
      for i = 1, 3 do if samplers[i] then samplers[i].stop() end end
      for i = 1, 3 do if servers[i] then servers[i]:stop() end end
      for i = 1, 3 do
        if samplers[i] then assert(samplers[i].max <= max + 1, "server " .. i .. ": " .. report(samplers[i])) end
      end
      assert(ok, st)
      for i = 1, 3 do check_stampede(assert, st, samplers[i], 600, max + 1) end
    end)
  end
end)

-- a stampede of a Cluster or Sentinel pool under luv, each node of 'nodes'
-- sampled; the Redis counters live on a server of their own.  Timeout 10,
-- as in the stampedes above
local function per_node(nodes, pool, n, k)
  pool.timeout = 10
  local counters = R.start()
  local samplers = {}
  local ok, st = pcall(function()
    for i, node in ipairs(nodes) do samplers[i] = S.sampler(node, 5) end
    return S.child(counters, [[
      local d = S.drivers.luv()
      local fl = require "fluxalock"
      fl.configure { host = d.host, pools = { default = ARGS.pool } }
      return S.stampede(d, fl.locker(), S.counter(SERVER, d), ARGS)
    ]], { pool = pool, n = n, k = k, ttl = BIG, wait = BIG })
  end)
  for i = 1, #nodes do if samplers[i] then samplers[i].stop() end end
  counters:stop()
  return ok, st, samplers
end

describe("many coroutines, few connections per node of a Cluster and a Sentinel pool", function()
  local T = require "support.topology"

  it("a Cluster pool of 3 masters under host 'luv': 600 coroutines on 30 keys, "
    .. "at most 5 connections to each node", function()
    local cluster = T.cluster()
    local ok, st, samplers = per_node(cluster.nodes, { cluster = cluster.seeds }, 600, 30)
    cluster:stop()
    for i = 1, #samplers do assert(samplers[i].max <= 5, "node " .. i .. ": " .. report(samplers[i])) end
    assert(ok, st)
    check_stampede(assert, st, { max = 1, samples = 3 }, 600, 5) -- the bound is checked per node above
    local used = 0
    for i = 1, #samplers do if samplers[i].max >= 1 then used = used + 1 end end
    assert.is_true(used >= 3, "the keys reached " .. used .. " nodes") -- every master served some
  end)

  it("a Sentinel pool under host 'luv': 600 coroutines on 6 keys, at most 5 connections to the master", function()
    local NAME = "scale-master"
    local master, replica, _, addrs, stop = T.replicated(NAME)
    local ok, st, samplers = per_node({ master, replica }, { sentinels = addrs, master = NAME }, 600, 6)
    stop()
    for i = 1, 2 do assert(samplers[i].max <= 5, (i == 1 and "master: " or "replica: ") .. report(samplers[i])) end
    assert(ok, st)
    check_stampede(assert, st, samplers[1], 600, 5)
  end)
end)

describe("the pool option max_connections", function()
  local fluxalock = require "fluxalock"

  local function raised(f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error, got none")
    return tostring(err)
  end

  local function misuse(v, where)
    return raised(fluxalock.configure, where(v))
  end

  local places = {
    { "a single-server pool", "jobs", function(v) return { pools = { jobs = { url = "redis://127.0.0.1:1/0",
      max_connections = v } } } end },
    { "the defaults", "defaults", function(v) return { defaults = { max_connections = v },
      pools = { jobs = "redis://127.0.0.1:1/0" } } end },
    { "a Redlock pool", "rl", function(v) return { pools = { rl = { redlock = { "redis://127.0.0.1:1",
      "redis://127.0.0.1:2", "redis://127.0.0.1:3" }, max_connections = v } } } end },
    { "a Sentinel pool", "sen", function(v) return { pools = { sen = { sentinels = { "127.0.0.1:1" },
      master = "m", max_connections = v } } } end },
    { "a Cluster pool", "cl", function(v) return { pools = { cl = { cluster = { "127.0.0.1:1" },
      max_connections = v } } } end },
  }
  local bad = { { "0", 0 }, { "1.5", 1.5 }, { 'the string "4"', "4" }, { "-1", -1 }, { "true", true },
    { "a table", {} }, { "NaN", 0 / 0 }, { "infinity", math.huge } }

  for _, place in ipairs(places) do
    for _, b in ipairs(bad) do
      it(("raises for %s in %s, naming the pool and the option"):format(b[1], place[1]), function()
        local err = misuse(b[2], place[3])
        assert.matches(("pool '%s': option 'max_connections' "):format(place[2]), err, 1, true)
        -- a message about the value: the option itself is known
        assert.is_nil(err:find("not a known option", 1, true), err)
        assert.is_nil(err:find("attempt to", 1, true), err)
      end)
    end
  end

  it("a rejected configure changes nothing", function()
    local server = R.start()
    local ok, err = pcall(function()
      fluxalock.configure { host = false, pools = { default = server.url } }
      local before = fluxalock.locker()
      raised(fluxalock.configure, { pools = { default = { url = server.url, max_connections = 0 } } })
      assert.equal(before, fluxalock.locker())
      assert.is_true(assert(before:obtain("unchanged", 5)):release())
    end)
    server:stop()
    assert(ok, err)
  end)

  it("accepts 1, 4 and 64, in a pool and in the defaults, and a lock works with each", function()
    local server = R.start()
    local ok, err = pcall(function()
      for _, v in ipairs { 1, 4, 64 } do
        assert.is_true(fluxalock.configure { pools = { default = { url = server.url, max_connections = v } } })
        local lock = assert(fluxalock.locker():obtain("accepted:" .. v, 5))
        assert.is_true(lock:release())
        assert.is_true(fluxalock.configure { defaults = { max_connections = v }, pools = { default = server.url } })
        lock = assert(fluxalock.locker():obtain("accepted:defaults:" .. v, 5))
        assert.is_true(lock:release())
      end
      fluxalock.configure { defaults = {}, pools = { default = server.url } }
    end)
    server:stop()
    assert(ok, err)
  end)
end)
