-- Test support: real redis-server processes on free loopback ports (and a
-- Unix socket), started by the specs themselves and stopped by their own
-- PID; real OS processes for concurrency.  Never a mock.
--
-- The harness at a glance (each is described where it is defined):
--   R.setup(opts, fill)    one line in a describe block: a server, a module
--                          configured for it and its default locker
--   R.setup_pair(fill)     the same for a master and an acknowledging replica
--   R.own(opts, pool)      a server of one test's own, stopped at its end
--   R.start(opts)          a server: :cli, :call, :counts (MGET, one round
--                          trip), :blocked, :pause, :resume, :kill, :restart,
--                          :refusing, :stop
--   R.child(body, env)     a child process whose program starts with the
--                          shared preamble (spec/support/child.lua): fluxalock,
--                          core, locker, witness, event; proc:wait, :output,
--                          :ready(file), :tell(file), :signal
--   R.holder(server, key)  a child that holds key until proc:release() (a
--                          Redis key) or until a waiter is blocked
--   R.until_true(fn)       wait for a condition, never a fixed sleep
--   R.tmpdir, R.tmpfile    temporary files (spec/support/tmp.lua removes them)
--   R.free_port, R.timed, R.events, R.read, R.write, R.sh, R.quote
-- Event-loop hosts: spec/support/hosts.lua; Sentinel and Cluster:
-- spec/support/topology.lua; TLS: spec/support/tls.lua.
local core = require "fluxalock.core"
local resp = require "support.resp"
local Tmp = require "support.tmp"
local S = require "support.sys"

local R = {}

local sh, q = S.sh, S.quote
R.sh, R.quote = sh, q
R.read, R.write = S.read, S.write

R.sleep = core.sleep
R.now = core.now

-- random choices (ports, DNS addresses) of this process's own.  Lua seeds
-- from the time in seconds and an address, and under valgrind, which
-- lays memory out the same every time, two spec processes started in one
-- second (two runs side by side) drew the same numbers
math.randomseed(S.self_pid(), math.floor(core.now() * 1e9))

-- elapsed seconds of f(...), and its results
function R.timed(f, ...)
  local t = core.now()
  local r = table.pack(f(...))
  return core.now() - t, table.unpack(r, 1, r.n)
end

-- temporary directories and files, removed when the process ends
-- (spec/support/tmp.lua): R.tmpdir("tag"), R.tmpfile("tag")
R.tmpdir, R.tmpfile = Tmp.dir, Tmp.file
local function mkdtemp() return Tmp.dir("r") end

-- a process that exited but was not reaped yet (a zombie) counts as gone
local alive = S.alive
R.alive = alive

-- a process to stop when this one ends, if it is still running then
local track = Tmp.track
R.track = track

-- wait until fn() is true, polling; the condition is the real signal, the
-- poll interval only paces the checks.  The timeout only stops a hang: it
-- is multiplied by FLUXALOCK_WAIT_SCALE, which the valgrind run sets (a
-- child's start there took over 10 s on a loaded machine)
local WAIT_SCALE = tonumber(os.getenv("FLUXALOCK_WAIT_SCALE") or "") or 1
local function until_true(fn, timeout, what)
  local deadline = core.now() + (timeout or 10) * WAIT_SCALE
  while not fn() do
    if core.now() > deadline then error("timed out waiting for " .. (what or "condition"), 2) end
    core.sleep(0.01)
  end
end
R.until_true = until_true

local Server = {}
Server.__index = Server

-- R.start{ args = {"--requirepass", "x"}, persist = true, port = n }
function R.start(opts)
  opts = opts or {}
  local s = setmetatable({ opts = opts, dir = opts.dir or mkdtemp(), host = "127.0.0.1" }, Server)
  s.socket = s.dir .. "/redis.sock"
  s:_launch(opts.port)
  return s
end

-- Free ports are taken below the kernel's ephemeral range: a client
-- socket in TIME_WAIT holds its ephemeral port against a new listener (it
-- was bound without SO_REUSEADDR), and a busy suite leaves thousands.
local function ephemeral_low()
  local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
  local low = f and tonumber(f:read("l"):match("^%s*(%d+)"))
  if f then f:close() end
  return low
end

-- Ports.  A port a stopped server had is still tried for a while by the
-- clients it had: sentinels and replicas that watched it, a pool's
-- reconnects, in another job of the run or in another run beside it.  A
-- new server on that port takes their connections and commands (seen: a
-- stampede that never subscribes counted another job's subscriptions and
-- scripts among its connections).  So each port a server is started on is
-- claimed machine-wide, a directory in REGISTRY (mkdir is atomic), and not
-- given out again for QUARANTINE minutes.  Without a writable /tmp the
-- claim is left out.
local REGISTRY, QUARANTINE = "/tmp/fluxalock-test-ports", 15
local registry -- nil: not looked at yet; false: none
local function sweep()
  os.execute(("find %s -mindepth 1 -maxdepth 1 -mmin +%d -exec rmdir {} + 2>/dev/null"):format(REGISTRY, QUARANTINE))
end
local function claim(p)
  if registry == nil then
    registry = os.execute("mkdir -p " .. REGISTRY .. " 2>/dev/null && test -w " .. REGISTRY) == true
    if registry then sweep() end
  end
  return not registry or os.execute(("mkdir %s/%d 2>/dev/null"):format(REGISTRY, p)) == true
end

-- a port in lo..hi no test run of this machine used in the last
-- QUARANTINE minutes, claimed for this process's server
function R.pick_port(lo, hi)
  for i = 1, 400 do
    local p = math.random(lo, hi)
    if claim(p) then return p end
    if i % 100 == 0 then sweep() end
  end
  error(("no port in %d-%d left unclaimed in %s"):format(lo, hi, REGISTRY), 2)
end

local function random_port()
  local low = ephemeral_low()
  if low and low > 11000 then return R.pick_port(10000, low - 1) end
  return R.pick_port(20000, 59999)
end

-- the size of a file (0 if absent)
local function fsize(path)
  local f = io.open(path)
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

-- did the server started after 'from' bytes of its log fail to listen?
local function failed_listening(logfile, from, p)
  local f = io.open(logfile)
  if not f then return false end
  f:seek("set", from)
  local log = f:read("a")
  f:close()
  return log:find("Failed listening on port " .. p, 1, true) ~= nil
end

function Server:_launch(port)
  if self.hold then -- (held since its stop: Server:stop)
    self.hold:close()
    self.hold = nil
  end
  for _ = 1, 20 do
    local p = port or random_port()
    local logfrom = fsize(self.dir .. "/redis.log")
    local args = {
      "redis-server", "--port", p, "--bind", "127.0.0.1",
      "--unixsocket", self.socket, "--unixsocketperm", "700",
      "--dir", self.dir, "--pidfile", self.dir .. "/redis.pid",
      "--logfile", self.dir .. "/redis.log", "--daemonize", "yes",
      "--save", "", "--protected-mode", "no",
    }
    if self.opts.persist then
      for _, a in ipairs { "--appendonly", "yes", "--appendfsync", "always" } do args[#args + 1] = a end
    else
      for _, a in ipairs { "--appendonly", "no" } do args[#args + 1] = a end
    end
    -- "{port}" is the port being tried (spec/support/tls.lua: --tls-port)
    for _, a in ipairs(self.opts.args or {}) do args[#args + 1] = a == "{port}" and p or a end
    for i, a in ipairs(args) do args[i] = q(a) end
    os.remove(self.dir .. "/redis.pid")
    sh(table.concat(args, " ") .. " >/dev/null 2>&1")
    local ok = pcall(until_true, function()
      local f = io.open(self.dir .. "/redis.pid")
      if not f then
        -- a taken port ends the server at once: try another without waiting
        if failed_listening(self.dir .. "/redis.log", logfrom, p) then error("port " .. p .. " taken") end
        return false
      end
      self.pid = tonumber(f:read("l"))
      f:close()
      -- ours, not another run's server on a port ours could not bind
      local info = self.pid and self:cli("INFO", "server")
      if info and tonumber(info:match("process_id:(%d+)")) == self.pid then
        -- a server with data to load answers INFO, but every other command
        -- with LOADING, until its AOF is read (seen on a loaded machine).
        -- The field at a line's start: "async_loading:0" stands beside
        -- "loading:1" while it loads
        if not self.opts.persist then return true end
        local st = self:cli("INFO", "persistence")
        return st ~= nil and ("\n" .. st):match("\nloading:(%d)") == "0"
      end
      return self.pid and self.opts.args and info:match("NOAUTH") and alive(self.pid)
    end, 5, "redis-server")
    if ok then
      self.port = p
      self.url = ("redis://127.0.0.1:%d/0"):format(p)
      self.unix_url = "unix://" .. self.socket
      track(self.pid)
      return
    end
    if self.pid and alive(self.pid) then self:stop() end
    if port then break end -- a fixed port that is taken: give up
  end
  local log = io.open(self.dir .. "/redis.log")
  error("could not start redis-server: " .. (log and log:read("a") or "?"))
end

-- a command over the Unix socket (works while the TCP port is the
-- subject), on a connection of the harness's own for this one call; the
-- reply as redis-cli prints it.  redis-cli itself only for its own options
function Server:cli(...)
  local first = ...
  if not tostring(first):find("^%-") then
    return resp.cli({ socket = self.socket }, self.opts.password, ...)
  end
  local args = { "redis-cli", "-s", self.socket }
  if self.opts.password then args[#args + 1] = "--no-auth-warning" args[#args + 1] = "-a" args[#args + 1] = self.opts.password end
  for _, a in ipairs { ... } do args[#args + 1] = a end
  for i, a in ipairs(args) do args[i] = q(a) end
  return (sh(table.concat(args, " ") .. " 2>&1"):gsub("\n$", ""))
end

-- a command on a connection of the harness's own for this one call; the
-- reply as a Lua value (integers, strings, tables; false for nil) or nil, err
function Server:call(...)
  return resp.call({ socket = self.socket }, self.opts.password, ...)
end

-- how many clients are blocked in BLPOP now (a fluxalock waiter waiting on
-- its wake-up list), from the server's CLIENT LIST
function Server:blocked()
  local n = 0
  for line in self:cli("CLIENT", "LIST"):gmatch("[^\n]+") do
    if line:find(" flags=%a*b") and line:find(" cmd=blpop", 1, true) then n = n + 1 end
  end
  return n
end

function Server:signal(sig)
  if self.pid then os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid)) end
end

-- stop: SIGTERM (or sig), then wait until the process is gone
function Server:stop(sig)
  if not self.pid then return end
  local pid = self.pid
  self:signal(sig or "TERM")
  self:signal("CONT") -- a stopped process cannot act on TERM
  until_true(function() return not alive(pid) end, 10, "redis-server exit")
  -- a killed process can be gone a moment before its listening socket is:
  -- wait for the port too, so restart() can bind it again at once
  if self.port then
    local pat = (":%04X 00000000:0000 0A"):format(self.port)
    until_true(function()
      local f = io.open("/proc/net/tcp")
      if not f then return true end
      local text = f:read("a")
      f:close()
      return not text:find(pat, 1, true)
    end, 10, "redis-server's port to close")
    -- held until a restart on it: a spec that stops a server expects its
    -- port refused, not another job's server that picked it meanwhile
    -- (seen: an AUTH error from a stopped server's port).  A port a
    -- connection of the old server holds in TIME_WAIT cannot be held: a
    -- server (SO_REUSEADDR) could still take it, rarely
    local hold = require("socket").tcp()
    if hold and hold:bind("127.0.0.1", self.port) then self.hold = hold elseif hold then hold:close() end
  end
  self.pid = nil
end

function Server:kill() self:stop("KILL") end

-- SIGKILL is reported before every thread of the server is gone: wait until
-- its port really refuses connections (the kernel closed its sockets)
function Server:refusing()
  local socket = require "socket"
  until_true(function()
    local c = socket.connect("127.0.0.1", self.port)
    if c then c:close() end
    return c == nil
  end, 10, "the killed server's port to close")
end
function Server:pause() self:signal("STOP") end
function Server:resume() self:signal("CONT") end

-- start again on the same port and socket (data kept only when persist)
function Server:restart()
  if self.pid then self:stop() end
  self:_launch(self.port)
end

-- a copy of the environment's Lua paths, for child processes
local function lua_env()
  local root = sh("pwd"):gsub("%s+$", "")
  return ("LUA_PATH=%s LUA_CPATH=%s"):format(
    q(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/?.lua;;"),
    q(root .. "/?.so;;"))
end

R.lua_env = lua_env

-- Lua code in a file main.lua of a new temporary directory -> file, dir
function R.program(code, tag)
  local dir = Tmp.dir(tag)
  local file = dir .. "/main.lua"
  S.write(file, code)
  return file, dir
end

-- R.spawn(code, env): run Lua code in a real OS process (lua5.4).
-- Returns a proc with :wait() -> output, exit code; :pid; :kill(sig).
function R.spawn(code, env)
  local file, dir = R.program(code, "p")
  local vars = {}
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
  local cmd = ("%s %s %s lua5.4 %s > %s 2>&1 & echo $!"):format(
    lua_env(), Tmp.env(), table.concat(vars, " "), q(file), q(dir .. "/out"))
  local pid = track(tonumber((sh("exec 3>&-; " .. cmd))))
  local proc = { pid = pid, dir = dir }
  function proc.output(self) return S.read(self.dir .. "/out") or "" end
  function proc.wait(self, timeout)
    until_true(function() return not alive(self.pid) end, timeout or 60, "child process " .. self.pid)
    return self:output()
  end
  -- wait until the child made path (its signal that it is ready), or ended
  function proc.ready(self, path, what, timeout)
    until_true(function() return S.read(path) ~= nil or not alive(self.pid) end, timeout or 20, what)
  end
  -- tell the child to end by making path (its stop signal); its output
  function proc.tell(self, path, timeout)
    S.write(path, "")
    return self:wait(timeout)
  end
  function proc.signal(self, sig) os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid)) end
  return proc
end

-- R.child(body, env): R.spawn of a program that starts with the preamble of
-- spec/support/child.lua (fluxalock configured from env's URL, URLS or
-- SEEDS, and TIMEOUT; a witness connection from WITNESS); body sees
-- fluxalock, core, locker, witness, event (and C, the whole preamble)
local PREAMBLE = 'local C = require "support.child" '
  .. "local fluxalock, core, locker, witness, event = C.fluxalock, C.core, C.locker, C.witness, C.event\n"
function R.child(body, env)
  return R.spawn(PREAMBLE .. body, env)
end

-- R.holder(server, key, o): a child process that obtains key (ttl o.ttl,
-- default 30; renewed with o.renew) and holds it until it is told to
-- release, never after a guessed pause: the test's proc:release() (it sets
-- the Redis key "<key>:go"), or with o.until_waiter a client of the server
-- blocked in BLPOP (a waiter on the key's wake-up list, from CLIENT LIST).
-- Returns the proc once the lock is held (the child set "<key>:held");
-- proc:wait() ends with "released true" (what release() returned).
local HOLDER = [[
local key, ttl = os.getenv("KEY"), tonumber(os.getenv("TTL"))
local redis = core.pool { path = os.getenv("SOCK") }
local lock = assert(locker:obtain(key, ttl, 0, os.getenv("RENEW") and { renew = true } or nil))
assert(redis:call { "SET", key .. ":held", lock:token() })
local function told()
  if os.getenv("UNTIL_WAITER") then
    return (redis:call { "CLIENT", "LIST" } or ""):find(" flags=%a*b[^\n]- cmd=blpop") ~= nil
  end
  return redis:call { "EXISTS", key .. ":go" } == 1
end
local deadline = core.now() + 60
while not told() and core.now() < deadline do core.sleep(0.005) end
print("released " .. tostring(lock:release()))
]]
function R.holder(server, key, o)
  o = o or {}
  server:cli("DEL", key .. ":held", key .. ":go")
  local p = R.child(HOLDER, { URL = server.url, SOCK = server.socket, KEY = key, TTL = o.ttl or 30,
    RENEW = o.renew and "1" or nil, UNTIL_WAITER = o.until_waiter and "1" or nil })
  until_true(function() return server:cli("EXISTS", key .. ":held") == "1" end, 10, "the holder of " .. key)
  p.token = server:cli("GET", key .. ":held")
  function p.release(self)
    server:cli("SET", key .. ":go", "1")
    return self:wait()
  end
  return p
end

-- the events a child printed with event(): NAME -> { t = seconds, detail }
function R.events(out)
  local e = {}
  for name, t, detail in out:gmatch("(%u[%u_]*) (%d+%.%d+) ([^\n]*)") do
    e[name] = { t = tonumber(t), detail = detail }
  end
  return e
end

-- a fresh module instance configured for server s (package.loaded reset)
function R.fluxalock(s, extra)
  local fl = require "fluxalock"
  local pool = { url = s.url }
  for k, v in pairs(extra or {}) do pool[k] = v end
  fl.configure { pools = { default = pool } }
  return fl
end

-- busted gives lazy_setup/lazy_teardown to spec files only (their _ENV):
-- the nearest caller whose _ENV has them
local function busted_env()
  for level = 3, 12 do
    local info = debug.getinfo(level, "f")
    if not info then break end
    for i = 1, math.huge do
      local name, v = debug.getupvalue(info.func, i)
      if not name then break end
      if name == "_ENV" and type(v) == "table" and v.lazy_setup then return v end
    end
  end
  error("R.setup: call it from a describe block of a spec file", 3)
end

-- One line of setup for a describe block:
--   local env = R.setup({ server = <R.start options>, pool = <more pool
--     fields>, host = <host name>, locker = false, module = false,
--     teardown = fn }, fill)
-- registers a lazy_setup that starts a server, configures a fluxalock
-- module for it (its default pool; not with module = false) and makes the
-- default locker (not with locker = false or module = false), and a
-- lazy_teardown that runs opts.teardown(env) and stops the server.  env
-- gets server, fluxalock, locker at setup; fill(env), if given, is called
-- then (to copy them into the spec's own locals).
R.busted_env = busted_env

function R.setup(opts, fill)
  opts = opts or {}
  local busted, env = busted_env(), {}
  busted.lazy_setup(function()
    env.server = R.start(opts.server)
    if opts.module ~= false then
      env.fluxalock = R.fluxalock(env.server, opts.pool)
      if opts.host then env.fluxalock.configure { host = opts.host } end
      if opts.locker ~= false then env.locker = env.fluxalock.locker() end
    end
    if fill then fill(env) end
  end)
  busted.lazy_teardown(function()
    if opts.teardown then opts.teardown(env) end
    if env.server then env.server:stop() end
  end)
  return env
end

-- the values of keys, as numbers (0 for a missing key), in one round trip
-- on a connection of the harness's own: server:counts("holders", "total")
function Server:counts(...)
  local r = assert(self:call("MGET", ...))
  local out = {}
  for i = 1, select("#", ...) do out[i] = tonumber(r[i]) or 0 end
  return table.unpack(out, 1, select("#", ...))
end

-- a master and a replica acknowledging its writes (a write, then WAIT on
-- the same connection: right after the sync the replica may not yet, for
-- a moment) -> master, replica
function R.pair()
  -- (no 5 s diskless-sync delay: the replica syncs at once)
  local master = R.start { args = { "--repl-diskless-sync-delay", "0" } }
  local replica = R.start { args = { "--replicaof", "127.0.0.1", tostring(master.port) } }
  until_true(function()
    local out = sh(("printf 'SET warm 1\\nWAIT 1 100\\n' | redis-cli -p %d"):format(master.port))
    return out == "OK\n1\n"
  end, 10, "replica acknowledging")
  return master, replica
end

-- R.setup_pair(fill): for a describe block, R.pair() at its lazy_setup
-- (fill(env) then, env.master and env.replica), both stopped at its
-- lazy_teardown; returns env
function R.setup_pair(fill)
  local busted, env = busted_env(), {}
  busted.lazy_setup(function()
    env.master, env.replica = R.pair()
    if fill then fill(env) end
  end)
  busted.lazy_teardown(function()
    if env.replica then env.replica:stop() end
    if env.master then env.master:stop() end
  end)
  return env
end

-- R.own(opts, pool): a server of the running test's own (R.start's opts),
-- stopped at the test's end (busted's finally, also when an assertion
-- fails) -> server, fluxalock (configured for it, pool: more pool fields),
-- its default locker
function R.own(opts, pool)
  local server = R.start(opts)
  busted_env().finally(function() server:stop() end)
  local fl = R.fluxalock(server, pool)
  return server, fl, fl.locker()
end

-- n servers started (R.start) -> the list of them, the list of their URLs
function R.servers(n)
  local servers, urls = {}, {}
  for i = 1, n do
    servers[i] = R.start()
    urls[i] = servers[i].url
  end
  return servers, urls
end

-- a loopback port where every connect is refused -> port, its redis:// URL.
-- A socket of this process stays bound to it, without listening (and
-- without SO_REUSEADDR), until the process ends: no server of another spec
-- running beside this one can take the port meanwhile
local reserved = {}
function R.free_port()
  local socket = require "socket"
  local s = assert(socket.tcp())
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  reserved[#reserved + 1] = s
  port = assert(tonumber(port))
  return port, ("redis://127.0.0.1:%d/0"):format(port)
end

return R
