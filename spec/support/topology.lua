-- Test support for the pool kinds: Redis Sentinel and Redis Cluster, made of
-- real redis-server processes on loopback ports, started here and stopped by
-- their own PID (support.redis does the single servers).
local R = require "support.redis"
local resp = require "support.resp"

local T = {}
local q = R.quote

local track = R.track

local Node = {}
Node.__index = Node

-- a command over TCP (sentinels have no Unix socket here), on a
-- connection of the harness's own for this one call; redis-cli itself only
-- for its own options (--no-raw)
function Node:cli(...)
  local first = ...
  if not tostring(first):find("^%-") then
    return resp.cli({ host = self.host, port = self.port }, nil, ...)
  end
  local args = { "redis-cli", "-h", self.host or "127.0.0.1", "-p", self.port }
  for _, a in ipairs { ... } do args[#args + 1] = a end
  for i, a in ipairs(args) do args[i] = q(a) end
  return (R.sh(table.concat(args, " ") .. " 2>&1"):gsub("\n$", ""))
end

function Node:stop(sig)
  if not self.pid then return end
  local pid = self.pid
  os.execute(("kill -%s %d 2>/dev/null; kill -CONT %d 2>/dev/null"):format(sig or "TERM", pid, pid))
  R.until_true(function() return not R.alive(pid) end, 10, "server exit")
  self.pid = nil
end

-- a redis-server from a config file ('lines'), with extra CLI words; lines
-- may be a function of the port (tried until a free one is found); host: the
-- loopback address it binds (default 127.0.0.1)
local function launch(lines, extra, port, host)
  host = host or "127.0.0.1"
  local dir = R.tmpdir("t")
  for _ = 1, 20 do
    local p = port or R.pick_port(20000, 59999)
    local conf = dir .. "/node.conf"
    local f = assert(io.open(conf, "w"))
    f:write(("port %d\nbind %s\nprotected-mode no\ndaemonize yes\n"):format(p, host))
    f:write(("dir %s\npidfile %s/node.pid\nlogfile %s/node.log\n"):format(dir, dir, dir))
    for _, l in ipairs(lines) do f:write(l, "\n") end
    f:close()
    os.remove(dir .. "/node.pid")
    R.sh(("redis-server %s %s >/dev/null 2>&1"):format(q(conf), extra or ""))
    local n = setmetatable({ port = p, dir = dir, host = host, addr = host .. ":" .. p }, Node)
    local ok = pcall(R.until_true, function()
      local h = io.open(dir .. "/node.pid")
      if not h then return false end
      n.pid = tonumber(h:read("l"))
      h:close()
      -- ours, not another run's server on a port ours could not bind
      return n.pid and tonumber(n:cli("INFO", "server"):match("process_id:(%d+)")) == n.pid
    end, 5, "redis-server")
    if ok then
      track(n.pid)
      return n
    end
    if n.pid and R.alive(n.pid) then n:stop("KILL") end
    if port then break end
  end
  error("could not start a redis-server in " .. dir)
end
T.launch = launch

local function free_port()
  for _ = 1, 50 do
    local p = R.pick_port(20000, 59999)
    if not R.sh("ss -Htln 'sport = :" .. p .. "' 2>/dev/null"):find("LISTEN", 1, true) then return p end
  end
  error("no free port")
end

-- ---- Sentinel -------------------------------------------------------------

-- T.sentinels(master, replicas, n, name): n sentinels watching 'master' (a
-- support.redis server) as 'name', quick to declare it down and to fail
-- over.  They are told about each other and the replicas in their config,
-- so they need not wait for the 2 s hello messages to find each other.
function T.sentinels(master, replicas, n, name)
  -- the ports are chosen first (each config names the others): one taken
  -- meanwhile by another process makes a new set of ports
  for _ = 1, 5 do
    local ok, list = pcall(T._sentinels, master, replicas, n, name)
    if ok then return list end
  end
  error("could not start " .. n .. " sentinels")
end

function T._sentinels(master, replicas, n, name)
  local ports, ids, list = {}, {}, {}
  for i = 1, n do
    ports[i] = free_port()
    ids[i] = R.sh("head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \\n'"):sub(1, 40)
  end
  for i = 1, n do
    local lines = {
      ("sentinel myid %s"):format(ids[i]),
      ("sentinel monitor %s 127.0.0.1 %d 2"):format(name, master.port),
      ("sentinel down-after-milliseconds %s 300"):format(name),
      ("sentinel failover-timeout %s 3000"):format(name),
      ("sentinel parallel-syncs %s 1"):format(name),
    }
    for j = 1, n do
      if j ~= i then
        lines[#lines + 1] = ("sentinel known-sentinel %s 127.0.0.1 %d %s"):format(name, ports[j], ids[j])
      end
    end
    for _, r in ipairs(replicas) do
      lines[#lines + 1] = ("sentinel known-replica %s 127.0.0.1 %d"):format(name, r.port)
    end
    local ok, node = pcall(launch, lines, "--sentinel", ports[i])
    if not ok then
      for _, started in ipairs(list) do started:stop() end
      error(node, 0)
    end
    list[i] = node
  end
  return list
end

-- T.replicated(name): a master, a replica in sync with it, and 3 sentinels
-- watching them as 'name' -> master, replica, sentinels, addrs (the
-- sentinels' "host:port"), stop (stops whatever is still running)
function T.replicated(name)
  -- (no 5 s diskless-sync delay: replicas sync at once)
  local master = R.start { args = { "--repl-diskless-sync-delay", "0" } }
  local replica = R.start { args = { "--replicaof", "127.0.0.1", tostring(master.port),
                                     "--repl-diskless-sync-delay", "0" } }
  R.until_true(function()
    return replica:cli("INFO", "replication"):find("master_link_status:up", 1, true)
  end, 10, "replica in sync")
  local sentinels = T.sentinels(master, { replica }, 3, name)
  local addrs = {}
  for i, s in ipairs(sentinels) do addrs[i] = s.addr end
  local function stop()
    for _, s in ipairs(sentinels) do s:stop() end
    if master.pid then master:stop() end
    if replica.pid then replica:stop() end
  end
  return master, replica, sentinels, addrs, stop
end

-- ---- Cluster ----------------------------------------------------------------

-- T.cluster([o]): 3 masters + 3 replicas made by redis-cli --cluster create.
-- Returns { nodes = {...}, seeds = {"127.0.0.1:p", ...} }, nodes with .id;
-- c:master_of(slot), c:replica_of(node), c:stop().  o.host: the loopback
-- address of every node; o.lines: more config lines; o.replicas = 0: 3
-- masters only.
local Cluster = {}
Cluster.__index = Cluster

function T.cluster(o)
  o = o or {}
  local c = setmetatable({ nodes = {}, seeds = {} }, Cluster)
  local reps = o.replicas or 1
  for i = 1, 3 * (1 + reps) do
    local lines = { "cluster-enabled yes", "cluster-config-file nodes.conf",
                    "cluster-node-timeout 1000", "appendonly no", 'save ""',
                    "repl-diskless-sync-delay 0" }
    -- (the cluster bus would otherwise announce the source address of its
    -- connections, 127.0.0.1)
    if o.host then lines[#lines + 1] = "cluster-announce-ip " .. o.host end
    for _, l in ipairs(o.lines or {}) do lines[#lines + 1] = l end
    c.nodes[i] = launch(lines, nil, nil, o.host)
    c.seeds[i] = c.nodes[i].addr
  end
  local args = {}
  for i, s in ipairs(c.seeds) do args[i] = q(s) end
  local out = R.sh("redis-cli --cluster create " .. table.concat(args, " ") ..
    " --cluster-replicas " .. reps .. " --cluster-yes 2>&1")
  assert(out:find("All 16384 slots covered", 1, true), out)
  R.until_true(function()
    for _, n in ipairs(c.nodes) do
      if not n:cli("CLUSTER", "INFO"):find("cluster_state:ok", 1, true) then return false end
    end
    return true
  end, 20, "cluster state ok")
  for _, n in ipairs(c.nodes) do n.id = n:cli("CLUSTER", "MYID") end
  return c
end

function Cluster:node(id)
  for _, n in ipairs(self.nodes) do if n.id == id then return n end end
end

-- the master serving 'slot', as every node sees it in CLUSTER SHARDS-less
-- Redis 7.0: from CLUSTER SLOTS of the given node (default: the first alive)
function Cluster:master_of(slot, via)
  via = via or self.nodes[1]
  local out = via:cli("--no-raw", "CLUSTER", "SLOTS")
  local entry = '%d+%) 1%) %(integer%) (%d+)\n%s+2%) %(integer%) (%d+)\n'
    .. '%s+3%) 1%) [^\n]*\n%s+2%) %(integer%) (%d+)' -- (nil): unknown endpoint
  for from, to, port in out:gmatch(entry) do
    if slot >= tonumber(from) and slot <= tonumber(to) then
      for _, n in ipairs(self.nodes) do if n.port == tonumber(port) then return n end end
    end
  end
end

function Cluster:replica_of(master)
  for _, n in ipairs(self.nodes) do
    if n ~= master and n:cli("ROLE"):find("^slave\n127.0.0.1\n" .. master.port .. "\n") then return n end
  end
end

function Cluster:slot(key) return tonumber(self.nodes[1]:cli("CLUSTER", "KEYSLOT", key)) end

function Cluster:stop()
  for _, n in ipairs(self.nodes) do if n.pid then n:stop() end end
end

-- a master other than 'node'
function Cluster:other_master(node)
  for _, n in ipairs(self.nodes) do
    if n ~= node and n:cli("ROLE"):find("^master") then return n end
  end
end

-- slot's keys migrated from 'from' to 'to' (MIGRATING/IMPORTING, every key
-- of the slot MIGRATEd: the source answers ASK from here on); then, unless
-- 'migrating_only', the slot given to 'to' on every master (MOVED)
function Cluster:move_slot(slot, from, to, migrating_only)
  to:cli("CLUSTER", "SETSLOT", slot, "IMPORTING", from.id)
  from:cli("CLUSTER", "SETSLOT", slot, "MIGRATING", to.id)
  repeat
    local keys = from:cli("CLUSTER", "GETKEYSINSLOT", slot, "100")
    if keys ~= "" then
      local args = { "MIGRATE", "127.0.0.1", to.port, "", "0", "5000", "KEYS" }
      for k in keys:gmatch("[^\n]+") do args[#args + 1] = k end
      from:cli(table.unpack(args))
    end
  until keys == ""
  if not migrating_only then self:give_slot(slot, to) end
end

-- slot handed to 'to' on every master (no key moved), 'to' first, as
-- Redis's own procedure does: with the source first, the two pointed a
-- request at each other until 'to' learnt it (seen: "more than 5
-- redirects" in a waiter that retried meanwhile)
function Cluster:give_slot(slot, to)
  assert(to:cli("CLUSTER", "SETSLOT", slot, "NODE", to.id) == "OK")
  for _, n in ipairs(self.nodes) do
    if n ~= to and n:cli("ROLE"):find("^master") then
      assert(n:cli("CLUSTER", "SETSLOT", slot, "NODE", to.id) == "OK")
    end
  end
end

-- in the calling describe block: start(env) at lazy_setup, stop(env) at
-- lazy_teardown -> env
local function staged(start, stop)
  local env = {}
  local busted = R.busted_env()
  busted.lazy_setup(function() start(env) end)
  busted.lazy_teardown(function() stop(env) end)
  return env
end

-- T.setup_sentinel(name, pools, fill): in the calling describe block, a
-- master, its replica and sentinels watching it as 'name' (T.replicated),
-- started at lazy_setup and stopped at lazy_teardown, and fluxalock
-- configured with pools(addrs); fill(env) with env.master, env.replica,
-- env.sentinels, env.fluxalock
function T.setup_sentinel(name, pools, fill)
  return staged(function(env)
    local addrs
    env.master, env.replica, env.sentinels, addrs, env.stop = T.replicated(name)
    env.fluxalock = require "fluxalock"
    env.fluxalock.configure { pools = pools(addrs) }
    if fill then fill(env) end
  end, function(env) if env.stop then env.stop() end end)
end

-- T.setup_sentinels(name, n): in the calling describe block, a master and
-- n (default 1) sentinels watching it as 'name' (T.sentinels), started at
-- lazy_setup and stopped at lazy_teardown -> env (env.master, env.sentinels)
function T.setup_sentinels(name, n)
  return staged(function(env)
    env.master = R.start()
    env.sentinels = T.sentinels(env.master, {}, n or 1, name)
  end, function(env)
    for _, s in ipairs(env.sentinels or {}) do s:stop() end
    if env.master then env.master:stop() end
  end)
end

-- T.setup_cluster(pools, fill): in the calling describe block, a cluster
-- started at lazy_setup (stopped at lazy_teardown) and fluxalock configured
-- with pools(cluster); fill(cluster, fluxalock)
function T.setup_cluster(pools, fill)
  return staged(function(env)
    env.cluster = T.cluster()
    env.fluxalock = require "fluxalock"
    env.fluxalock.configure { pools = pools(env.cluster) }
    if fill then fill(env.cluster, env.fluxalock) end
  end, function(env) if env.cluster then env.cluster:stop() end end)
end

return T
