-- Test support for TLS: certificates made with openssl at test time in a
-- temporary directory (a CA, a second CA, server certificates by name and
-- IP, one for another name, an expired one, a client certificate), and
-- redis-servers listening with TLS only (--tls-port, --port 0), started and
-- stopped by PID through spec/support/redis.lua.
local R = require "support.redis"

local T = {}

local function run(cmd)
  local out, ok = R.sh(cmd .. " 2>&1")
  assert(ok, "openssl failed: " .. cmd .. "\n" .. out)
end

local write = R.write

-- a key and a certificate signed by ca (or self-signed when ca is nil)
local function cert(d, name, subj, ca, san, dates)
  local q = R.quote
  local key, crt = d .. "/" .. name .. ".key", d .. "/" .. name .. ".crt"
  run(("openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout %s -out %s.csr -subj %s")
    :format(q(key), q(d .. "/" .. name), q(subj)))
  if not ca then
    run(("openssl x509 -req -in %s.csr -signkey %s -out %s -days 30 -extfile %s")
      :format(q(d .. "/" .. name), q(key), q(crt), q(d .. "/ca.ext")))
  elseif dates then -- openssl ca: the only way here to date a certificate in the past
    write(d .. "/" .. name .. ".ext", "subjectAltName=" .. san .. "\n")
    run(("openssl ca -batch -config %s -cert %s -keyfile %s -in %s.csr -out %s -startdate %s -enddate %s -extfile %s -notext")
      :format(q(d .. "/ca.cnf"), q(ca .. ".crt"), q(ca .. ".key"), q(d .. "/" .. name), q(crt),
        dates[1], dates[2], q(d .. "/" .. name .. ".ext")))
  else
    write(d .. "/" .. name .. ".ext", "subjectAltName=" .. san .. "\n")
    run(("openssl x509 -req -in %s.csr -CA %s -CAkey %s -CAcreateserial -out %s -days 30 -extfile %s")
      :format(q(d .. "/" .. name), q(ca .. ".crt"), q(ca .. ".key"), q(crt), q(d .. "/" .. name .. ".ext")))
  end
  return crt, key
end

-- T.certs() -> a table of paths (made once per process)
local made
function T.certs()
  if made then return made end
  local d = R.tmpdir("tls")
  write(d .. "/ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n")
  write(d .. "/index.txt", "")
  write(d .. "/serial", "1000\n")
  write(d .. "/ca.cnf", ([[
[ ca ]
default_ca = test
[ test ]
dir = %s
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = any
unique_subject = no
[ any ]
commonName = supplied
]]):format(d))
  local c = { dir = d }
  c.ca = cert(d, "ca", "/CN=fluxalock test CA")
  c.ca2 = cert(d, "ca2", "/CN=fluxalock other CA")
  local ca, ca2 = d .. "/ca", d .. "/ca2"
  c.server, c.server_key = cert(d, "server", "/CN=localhost", ca, "DNS:localhost,IP:127.0.0.1")
  c.other, c.other_key = cert(d, "other", "/CN=other.example", ca, "DNS:other.example")
  c.wrong, c.wrong_key = cert(d, "wrong", "/CN=localhost", ca2, "DNS:localhost,IP:127.0.0.1")
  c.expired, c.expired_key = cert(d, "expired", "/CN=localhost", ca, "DNS:localhost,IP:127.0.0.1",
    { "20200101000000Z", "20200102000000Z" })
  c.client, c.client_key = cert(d, "client", "/CN=fluxalock client", ca, "DNS:client")
  -- the server's chain with its CA: a client that does not trust that CA
  -- sees a self-signed certificate in the chain
  local f = assert(io.open(c.server)) local leaf = f:read("a") f:close()
  f = assert(io.open(c.ca)) local root = f:read("a") f:close()
  c.chain = d .. "/chain.crt"
  write(c.chain, leaf .. root)
  -- a hashed directory holding the CA alone (for ca_path)
  c.ca_dir = d .. "/cadir"
  run(("mkdir -p %s && cp %s %s/ && openssl rehash %s"):format(R.quote(c.ca_dir), R.quote(c.ca),
    R.quote(c.ca_dir), R.quote(c.ca_dir)))
  made = c
  return c
end

-- T.start{ cert =, key =, clients = true (client certificates required),
-- args = {...} } -> a redis.lua Server listening with TLS only on s.port;
-- s.tls_url is its rediss:// URL by IP, s.cli still works (Unix socket)
function T.start(opts)
  opts = opts or {}
  local c = T.certs()
  local args = {
    "--tls-port", "{port}", "--port", "0",
    "--tls-cert-file", opts.cert or c.server, "--tls-key-file", opts.key or c.server_key,
    "--tls-ca-cert-file", c.ca, "--tls-auth-clients", opts.clients and "yes" or "no",
  }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local s = R.start { args = args }
  s.tls_url = ("rediss://127.0.0.1:%d/0"):format(s.port)
  s.url = nil -- no plain TCP port
  return s
end

-- T.sentinel(master, name) -> a Redis Sentinel speaking TLS only, watching
-- the TLS server 'master' as 'name' (quorum 1), over TLS too; :stop()
function T.sentinel(master, name)
  local c = T.certs()
  local dir = R.tmpdir("s")
  for _ = 1, 20 do
    local p = R.pick_port(20000, 59999)
    local f = assert(io.open(dir .. "/sentinel.conf", "w"))
    f:write(table.concat({
      "port 0", "tls-port " .. p, "bind 127.0.0.1", "protected-mode no", "daemonize yes",
      "dir " .. dir, "pidfile " .. dir .. "/s.pid", "logfile " .. dir .. "/s.log",
      "tls-cert-file " .. c.server, "tls-key-file " .. c.server_key, "tls-ca-cert-file " .. c.ca,
      "tls-auth-clients no", "tls-replication yes",
      ("sentinel monitor %s 127.0.0.1 %d 1"):format(name, master.port),
    }, "\n") .. "\n")
    f:close()
    os.remove(dir .. "/s.pid")
    R.sh(("redis-server %s --sentinel >/dev/null 2>&1"):format(R.quote(dir .. "/sentinel.conf")))
    local node = { port = p, dir = dir }
    local function cli(...)
      local args = { "redis-cli", "--tls", "--cacert", c.ca, "-h", "127.0.0.1", "-p", p, ... }
      for k, a in ipairs(args) do args[k] = R.quote(a) end
      return (R.sh(table.concat(args, " ") .. " 2>&1"):gsub("\n$", ""))
    end
    node.cli = function(_, ...) return cli(...) end
    local ok = pcall(R.until_true, function()
      local h = io.open(dir .. "/s.pid")
      if not h then return false end
      node.pid = tonumber(h:read("l"))
      h:close()
      return node.pid and cli("SENTINEL", "get-master-addr-by-name", name):find(tostring(master.port), 1, true)
    end, 10, "a TLS sentinel")
    if ok then
      function node.stop(self)
        if not self.pid then return end
        local pid = self.pid
        os.execute(("kill -TERM %d 2>/dev/null"):format(pid))
        R.until_true(function() return not R.alive(pid) end, 10, "sentinel exit")
        self.pid = nil
      end
      R.track(node.pid)
      return node
    end
    if node.pid and R.alive(node.pid) then os.execute("kill -KILL " .. node.pid) end
  end
  error("could not start a TLS sentinel in " .. dir)
end

-- ---- host names, hermetically ---------------------------------------------

-- the process of T.dns's server on ip, port 53: it says "ready" once it
-- has the address
local function dns_process(mode, delay, ip)
  return R.spawn(([=[
    local socket = require "socket"
    local mode, delay = %q, %s
    local u = assert(socket.udp())
    assert(u:setsockname(%q, 53))
    io.stdout:write("ready\n") io.stdout:flush()
    while true do
      local q, ip, port = u:receivefrom()
      if q and #q > 12 and mode ~= "silent" then
        local i = 13
        while q:byte(i) and q:byte(i) ~= 0 do i = i + q:byte(i) + 1 end
        local qtype = (q:byte(i + 1) or 0) * 256 + (q:byte(i + 2) or 0)
        local id, question = q:sub(1, 2), q:sub(13, i + 4)
        if mode == "nxdomain" then -- response, recursion available, NXDOMAIN
          u:sendto(id .. "\129\131\0\1\0\0\0\0\0\0" .. question, ip, port)
        else
          socket.sleep(delay)
          if qtype == 1 then -- one A record: 127.0.0.1, ttl 60
            u:sendto(id .. "\129\128\0\1\0\1\0\0\0\0" .. question ..
              "\192\12\0\1\0\1\0\0\0\60\0\4\127\0\0\1", ip, port)
          elseif qtype == 28 and mode == "dual" then -- and ::1 for AAAA
            u:sendto(id .. "\129\128\0\1\0\1\0\0\0\0" .. question ..
              "\192\12\0\28\0\1\0\0\0\60\0\16" .. ("\0"):rep(15) .. "\1", ip, port)
          else
            u:sendto(id .. "\129\128\0\1\0\0\0\0\0\0" .. question, ip, port)
          end
        end
      end
    end
  ]=]):format(mode, tostring(delay or 0), ip))
end

-- T.dns(mode [, delay]) -> a DNS server of ours on a loopback address, port
-- 53, in a child process: "silent" answers nothing, "nxdomain" says no such
-- name, "answer" gives 127.0.0.1 for any A query after 'delay' seconds (and
-- no AAAA; "dual" answers AAAA with ::1 too).  :stop().  Only processes run by T.isolated() ask it.
function T.dns(mode, delay)
  local ip, proc
  for _ = 1, 20 do
    ip = ("127.53.%d.%d"):format(math.random(0, 255), math.random(1, 254))
    proc = dns_process(mode, delay, ip)
    -- "ready" alone on its line: a failed bind says "address already in
    -- use", which has those letters too
    R.until_true(function() return proc:output():find("^ready\n") or not R.alive(proc.pid) end, 60,
      "the DNS server")
    if proc:output():find("^ready\n") then break end
    -- the address is another DNS server's (a spec's beside this one): another
    assert(proc:output():find("address already in use", 1, true), "the DNS server failed: " .. proc:output())
    proc = nil
  end
  assert(proc, "no free address for a DNS server in 127.53.0.0/16 in 20 tries")
  local conf = proc.dir .. "/resolv.conf"
  local f = assert(io.open(conf, "w"))
  f:write("nameserver ", ip, "\noptions timeout:5 attempts:1\n")
  f:close()
  return { ip = ip, resolv = conf, stop = function() proc:signal("KILL") end }
end

-- T.can_isolate() -> true, or false and one line saying what this machine
-- lacks for T.isolated: a mount namespace of its own (unshare --mount: root,
-- and / a mount point, which a plain chroot's is not) in which a file can be
-- bound over /etc/resolv.conf.  glibc reads no other resolver configuration
-- (no variable names another file), so without it the cases cannot run.
local isolation
function T.can_isolate()
  if isolation then return isolation.ok, isolation.why end
  local dir = R.tmpdir("ns")
  write(dir .. "/resolv.conf", "nameserver 127.53.0.1\n")
  local inner = ("mount --bind %s /etc/resolv.conf && cat /etc/resolv.conf"):format(R.quote(dir .. "/resolv.conf"))
  local out = R.sh("timeout 20 unshare --mount sh -c " .. R.quote(inner) .. " 2>&1")
  local ok = out == "nameserver 127.53.0.1\n"
  local said = out:match("^[^\n]*")
  isolation = { ok = ok, why = not ok and
    ("test machine: the DNS cases need a private mount namespace (root, and / a mount point,"
      .. " so not a plain chroot: `unshare --mount true` must work); here: %s")
      :format(said ~= "" and said or "no output") or nil }
  return isolation.ok, isolation.why
end

-- T.isolated(dns, code) -> the output of Lua code run in a child process
-- whose /etc/resolv.conf (in a mount namespace of its own) names only our
-- DNS server: the real network is never asked
function T.isolated(dns, code)
  local file = R.program(code, "dns")
  local inner = ("mount --bind %s /etc/resolv.conf && %s exec lua5.4 %s")
    :format(R.quote(dns.resolv), R.lua_env(), R.quote(file))
  return (R.sh("timeout 60 unshare --mount sh -c " .. R.quote(inner) .. " 2>&1"))
end

return T
