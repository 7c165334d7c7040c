-- Test support for spec/scale_spec.lua (many coroutines, few connections):
-- loop drivers with a deadline, a connection sampler in its own process,
-- the stampede itself and the processes that contend beside it.  Everything
-- talks to a real redis-server; connections are counted by the server.
--
-- The pool under test always connects over TCP, and everything else the
-- specs run (redis-cli, the sampler, the Redis counters of the critical
-- sections, plain contenders) goes through the server's Unix socket, so
-- the TCP clients in CLIENT LIST are exactly the pool under test.  (Cluster
-- and Sentinel nodes have no socket: the sampler leaves out its own line
-- and the nodes' links to each other, and the counters get a server of
-- their own.)
local core = require "fluxalock.core"
local R = require "support.redis"

local S = {}

local now = core.now

-- Loop drivers: d.spawn(fn) starts fn as a coroutine of the loop, d.sleep(s)
-- yields to the loop for s seconds, d.run(limit) runs the loop until nothing
-- is left and returns true, or false when 'limit' seconds passed first (a
-- hang: the spec then fails instead of hanging the suite).  An error inside
-- a coroutine is collected in d.errors with its traceback.
local collect = require("support.hosts").collect

function S.luv()
  local uv = require "luv"
  local d = { name = "luv", host = "luv", errors = {} }
  local function resume(co)
    local ok, err = coroutine.resume(co)
    if not ok then d.errors[#d.errors + 1] = tostring(err) end
  end
  function d.spawn(fn) resume(coroutine.create(collect(d, fn))) end
  function d.sleep(s)
    local co = coroutine.running()
    local t = uv.new_timer()
    t:start(math.max(1, math.floor(s * 1000 + 0.5)), 0, function()
      t:close()
      resume(co)
    end)
    coroutine.yield()
  end
  function d.run(limit)
    local hung = false
    -- unref'd: the watchdog alone never keeps the loop running
    local dog = uv.new_timer()
    dog:start(math.floor(limit * 1000), 0, function()
      hung = true
      uv.stop()
    end)
    dog:unref()
    uv.run()
    if not dog:is_closing() then dog:stop() dog:close() end
    return not hung
  end
  return d
end

function S.cqueues()
  local cqueues = require "cqueues"
  local cq = cqueues.new()
  local d = { name = "cqueues", host = "cqueues", errors = {}, sleep = cqueues.sleep }
  function d.spawn(fn) cq:wrap(collect(d, fn)) end
  function d.run(limit)
    local deadline = now() + limit
    while not cq:empty() do
      local left = deadline - now()
      if left <= 0 then return false end
      local ok, err = cq:step(math.min(left, 0.5))
      if not ok then d.errors[#d.errors + 1] = tostring(err) end
    end
    return true
  end
  return d
end

-- A custom host ({ wait = fn }) with a round-robin scheduler: wait() yields
-- and the coroutine is resumed on the scheduler's next round (early, as the
-- host contract allows: the core checks its socket and deadline again).
-- d.abandon(co) drops a coroutine from the scheduler: it is never resumed
-- again.  d.current is the coroutine being resumed.
function S.custom()
  local d = { name = "custom", errors = {}, tasks = {}, waits = 0 }
  d.host = { wait = function()
    d.waits = d.waits + 1
    coroutine.yield("host wait")
  end }
  function d.spawn(fn)
    local co = coroutine.create(collect(d, fn))
    d.tasks[#d.tasks + 1] = co
    return co
  end
  function d.sleep(s)
    local t = now() + s
    repeat coroutine.yield("sleep") until now() >= t
  end
  function d.abandon(co)
    for i, t in ipairs(d.tasks) do
      if t == co then table.remove(d.tasks, i) return end
    end
  end
  -- resume co once; returns what it yielded
  function d.step(co)
    d.current = co
    local ok, what = coroutine.resume(co)
    d.current = nil
    if not ok then d.errors[#d.errors + 1] = tostring(what) end
    return what
  end
  function d.run(limit)
    local deadline = now() + limit
    while true do
      local live, i = 0, 1
      while i <= #d.tasks do
        local co = d.tasks[i]
        if coroutine.status(co) == "suspended" then d.step(co) end
        if coroutine.status(co) == "dead" then
          table.remove(d.tasks, i)
        else
          live = live + 1
          i = i + 1
        end
      end
      if live == 0 then return true end
      if now() > deadline then return false end
      core.sleep(0.0005) -- a round paced like a loop turn: nothing in Lua can poll the fds
    end
  end
  return d
end

S.drivers = { luv = S.luv, cqueues = S.cqueues }

-- in a child: the loop of host ("luv" or "cqueues"), and fluxalock
-- configured on it with a pool of the server's (pool: its options), as
-- d, fluxalock, locker
function S.hosted(server, host, pool)
  local d = S.drivers[host]()
  local fl = R.fluxalock(server, pool)
  fl.configure { host = d.host }
  return d, fl, fl.locker()
end

-- a plain core pool over the server's Unix socket for the specs' own
-- commands (INCR/DECR of the holders of a key), waiting through the
-- driver's host so it never blocks the loop
function S.counter(server, d)
  local p = core.pool { path = server.socket, timeout = 10, connect_timeout = 10 }
  local wait = d and d.host and require("fluxalock.host").resolve(d.host)
  if wait then p:sethost(wait) end
  return p
end

-- The sampler: a separate plain process that runs CLIENT LIST (over the
-- Unix socket, or TCP for a server without one) every 2 ms and keeps the
-- most TCP clients it saw on the server's port, with the list at that
-- moment.  It runs while the loop of
-- the spec is busy, so a blocked or busy loop does not stop the counting.
-- With 'trip' set it SIGKILLs the server (by its PID) once it sees more than
-- 'trip' connections: a pool over its bound then fails fast instead of
-- running a many-thousand-connection stampede to its end.
local SAMPLER = [[
local core = require "fluxalock.core"
local sock, port, stop, ready = os.getenv("SOCK"), os.getenv("PORT"), os.getenv("STOP"), os.getenv("READY")
local trip, pid = tonumber(os.getenv("TRIP")), os.getenv("PID")
-- over the Unix socket when the server has one, else over TCP: then this
-- connection's own line is left out of the count
local p = sock ~= "" and core.pool { path = sock, timeout = 10, connect_timeout = 10 }
  or core.pool { host = "127.0.0.1", port = tonumber(port), timeout = 10, connect_timeout = 10 }
local own = sock == "" and tostring(assert(p:call { "CLIENT", "ID" })) or nil
local pat = " laddr=127.0.0.1:" .. port .. " "
-- not the pool's: a replica's link (flags S or M) and a sentinel's (named so)
local function counted(line)
  if not line:find(pat, 1, true) then return false end
  if own and line:find("^id=" .. own .. " ") then return false end
  local flags = line:match(" flags=(%S*)") or ""
  if flags:find("[SM]") or line:find(" name=sentinel%-") then return false end
  return true
end
local max, samples, errors, at, tripped = 0, 0, 0, "", false
local function exists(f)
  local h = io.open(f)
  if h then h:close() end
  return h ~= nil
end
repeat
  local last = exists(stop) -- one more sample after the stop file appears
  local list = not tripped and p:call { "CLIENT", "LIST" }
  if type(list) == "string" then
    local n, marked = 0, {}
    for line in list:gmatch("[^\n]+") do
      -- "+" marks a line counted, "-" one left out
      if counted(line) then n = n + 1 marked[#marked + 1] = "+ " .. line
      else marked[#marked + 1] = "- " .. line end
    end
    samples = samples + 1
    if n > max then max, at = n, table.concat(marked, "\n") .. "\n" end
    if trip and n > trip and not tripped then
      tripped = true
      os.execute("kill -KILL " .. pid)
    end
  elseif not tripped then
    errors = errors + 1
  end
  if samples == 1 and not exists(ready) then io.open(ready, "w"):close() end
  if not last then core.sleep(0.002) end
until last
io.write(("sampler max=%d samples=%d errors=%d tripped=%s\n"):format(max, samples, errors, tostring(tripped)))
io.write(at)
]]

function S.sampler(server, trip)
  local dir = R.tmpdir("sampler")
  local s = { stopfile = dir .. "/stop", readyfile = dir .. "/ready", dir = dir }
  s.proc = R.spawn(SAMPLER, { SOCK = server.socket or "", PORT = tostring(server.port), STOP = s.stopfile,
    READY = s.readyfile, TRIP = trip and tostring(trip) or "", PID = tostring(server.pid) })
  s.proc:ready(s.readyfile, "the connection sampler to take its first sample")
  -- stop(): the most connections seen, how many samples, and the report
  function s.stop()
    local out = s.proc:tell(s.stopfile, 30)
    R.sh("rm -rf " .. R.quote(dir))
    local max, samples, errors, tripped = out:match("sampler max=(%d+) samples=(%d+) errors=(%d+) tripped=(%a+)")
    s.max, s.samples, s.errors, s.tripped = tonumber(max), tonumber(samples), tonumber(errors), tripped == "true"
    s.report = out
    -- a sampler that failed counts as over any bound (the specs check max)
    if not s.max then s.max, s.samples, s.report = math.huge, 0, "the sampler failed: " .. out:sub(1, 2000) end
    return s.max, s.samples
  end
  return s
end

-- a counter command; one whose connect failed never reached Redis, so it
-- is tried again (thousands of coroutines at once may meet a full listen
-- backlog on the counters' socket: that is the spec's bookkeeping, not the
-- pool under test)
function S.count(d, counter, cmd, key)
  local r, err
  for _ = 1, 400 do
    r, err = counter:call { cmd, key }
    if r or not tostring(err):find("^fluxalock: connect ") then break end
    d.sleep(0.005)
  end
  return r, err
end

-- The stampede: n coroutines, coroutine i wants key prefix .. (i % k), holds
-- it 'hold' seconds across a yield to the loop, then releases it.  Overlaps
-- are counted in Lua and in Redis (INCR on entry must give 1; the highest
-- value INCR returned is the most holders ever inside at once).
function S.stampede(d, locker, counter, opts)
  local n, k, hold = opts.n, opts.k or 1, opts.hold or 0.001
  local ttl, wait = opts.ttl or 60, opts.wait or 60
  local prefix = opts.prefix or "storm:"
  local st = { obtained = 0, released = 0, failed = {}, bad = {}, overlaps = 0, most_inside = 0 }
  local inside = {}
  local function bad(what) if #st.bad < 10 then st.bad[#st.bad + 1] = what end end
  local t0 = now()
  for i = 1, n do
    d.spawn(function()
      local key = prefix .. (i % k)
      local lock, err = locker:obtain(key, ttl, wait)
      if not lock then
        if #st.failed < 10 then st.failed[#st.failed + 1] = key .. ": " .. tostring(err) end
        st.nfailed = (st.nfailed or 0) + 1
        return
      end
      st.obtained = st.obtained + 1
      inside[key] = (inside[key] or 0) + 1
      if inside[key] > 1 then st.overlaps = st.overlaps + 1 end
      local c, cerr = S.count(d, counter, "INCR", "inside:" .. key)
      if math.type(c) ~= "integer" then bad("INCR: " .. tostring(cerr)) end
      if c and c > st.most_inside then st.most_inside = c end
      d.sleep(hold) -- held across a yield: the others run meanwhile
      inside[key] = inside[key] - 1
      c, cerr = S.count(d, counter, "DECR", "inside:" .. key)
      if math.type(c) ~= "integer" then bad("DECR: " .. tostring(cerr)) end
      local ok, rerr = lock:release()
      if ok == true then st.released = st.released + 1 else bad("release: " .. tostring(ok) .. " " .. tostring(rerr)) end
    end)
  end
  st.finished = d.run(opts.limit or 120)
  st.elapsed = now() - t0
  st.errors = d.errors
  st.nfailed = st.nfailed or 0
  return st
end

-- A plain (no host) contender in its own process: obtains keys prefix ..
-- (i % k) in turn over the Unix socket until the stop file exists,
-- counting the holders in Redis like the stampede.  Prints
-- "plain done=N overlaps=N not_obtained=N errors=N".
local PLAIN = [[
local core = require "fluxalock.core"
local fluxalock = require "fluxalock"
fluxalock.configure { pools = { default = { path = os.getenv("SOCK") } } }
local locker = fluxalock.locker()
local counter = core.pool { path = os.getenv("SOCK"), timeout = 10 }
local prefix, k, stop = os.getenv("PREFIX"), tonumber(os.getenv("K")), os.getenv("STOP")
local done, overlaps, missed, errors, i = 0, 0, 0, 0, 0
io.open(os.getenv("READY"), "w"):close()
while true do
  local h = io.open(stop)
  if h then h:close() break end
  i = i + 1
  local key = prefix .. (i % k)
  local lock, err = locker:obtain(key, 60, 30)
  if lock then
    if counter:call { "INCR", "inside:" .. key } ~= 1 then overlaps = overlaps + 1 end
    core.sleep(0.001)
    counter:call { "DECR", "inside:" .. key }
    if lock:release() ~= true then errors = errors + 1 end
    done = done + 1
  elseif err == fluxalock.NOT_OBTAINED then
    missed = missed + 1
  else
    errors = errors + 1
    io.stderr:write(tostring(err), "\n")
  end
end
print(("plain done=%d overlaps=%d not_obtained=%d errors=%d"):format(done, overlaps, missed, errors))
]]

function S.plain(server, prefix, k)
  local dir = R.tmpdir("plain")
  local p = { stopfile = dir .. "/stop" }
  local ready = dir .. "/ready"
  p.proc = R.spawn(PLAIN, { SOCK = server.socket, PREFIX = prefix, K = tostring(k), STOP = p.stopfile, READY = ready })
  p.proc:ready(ready, "the plain contender to start")
  function p.stop()
    local out = p.proc:tell(p.stopfile, 60)
    R.sh("rm -rf " .. R.quote(dir))
    local done, overlaps, missed, errors = out:match("plain done=(%d+) overlaps=(%d+) not_obtained=(%d+) errors=(%d+)")
    return { done = tonumber(done), overlaps = tonumber(overlaps), not_obtained = tonumber(missed),
      errors = tonumber(errors), out = out }
  end
  return p
end

-- The scenarios run in a child process (lua5.4, the checkout's build): a
-- crash or a hang of the host under test then fails its spec instead of
-- taking the whole suite down, and its connections are the only TCP
-- clients of the server.  S.child(server, body, args) runs 'body' (Lua
-- code; ARGS, SERVER, S, R and core are in scope; it returns a table of
-- strings, numbers, booleans and tables) and returns that table, or raises
-- with the child's output when it died without one.
local function serialize(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = ("[%s]=%s"):format(serialize(k), serialize(x)) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return (("%q"):format(v):gsub("\\\n", "\\n")) -- one line: %q keeps a newline as '\' + newline
  elseif t == "number" then
    if v ~= v then return "(0/0)" end
    if v == math.huge or v == -math.huge then return v > 0 and "math.huge" or "-math.huge" end
    return math.type(v) == "integer" and tostring(v) or ("%.17g"):format(v)
  elseif t == "boolean" or t == "nil" then
    return tostring(v)
  end
  return serialize(tostring(v))
end
S.serialize = serialize

local CHILD = [[
local S = dofile(os.getenv("SCALE_HELPER"))
local R = require "support.redis"
local core = require "fluxalock.core"
local ARGS = load("return " .. os.getenv("SCALE_ARGS"))()
local SERVER = ARGS.server
local ok, res = xpcall(function(...) %s
end, debug.traceback, S, R, core, ARGS, SERVER)
if not ok then res = { child_error = tostring(res) } end
io.stdout:write("\nSCALE-RESULT ", S.serialize(res), "\n")
io.stdout:flush()
os.exit(0, false) -- no lua_close: a scenario's leftovers must not hang the exit
]]

S.HELPER = debug.getinfo(1, "S").source:match("^@(.*)$")
if S.HELPER:sub(1, 1) ~= "/" then S.HELPER = R.sh("pwd"):gsub("%s+$", "") .. "/" .. S.HELPER end

-- S.spawn_child(server, body, args) starts it; handle:result(limit) waits
-- for its result.  S.child(...) does both.
function S.spawn_child(server, body, args)
  args = args or {}
  args.server = { url = server.url, port = server.port, socket = server.socket, pid = server.pid }
  local code = CHILD:format("local S, R, core, ARGS, SERVER = ... " .. body)
  local proc = R.spawn(code, { SCALE_HELPER = S.HELPER, SCALE_ARGS = serialize(args) })
  local h = { proc = proc }
  function h.result(_, limit)
    local ok, out = pcall(proc.wait, proc, limit or 180)
    if not ok then
      proc:signal("KILL")
      out = proc:output()
      error("the scenario's process did not end in time (killed); its output:\n" .. out:sub(-3000), 2)
    end
    local line = out:match("\nSCALE%-RESULT ([^\n]*)")
    local chunk = line and load("return " .. line)
    local res = chunk and chunk()
    if not res then error("the scenario's process died without a result; its output:\n" .. out:sub(-3000), 2) end
    if res.child_error then error("the scenario failed: " .. res.child_error, 2) end
    res.output = out
    return res
  end
  return h
end

function S.child(server, body, args, limit)
  return S.spawn_child(server, body, args):result(limit)
end

return S
