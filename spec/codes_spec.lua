-- Errors a program can branch on (API.md): every runtime failure is
-- nil, message, code, and each code is provoked here for real against
-- real redis-servers (refused ports, a SIGSTOPped server, connections cut
-- mid-command by a proxy, wrong passwords, an untrusted certificate, ACL
-- and maxmemory refusals, an unmet 'replicas', a Redlock majority down, a
-- lease that ran out before its renewal could start), on every pool kind
-- where the code applies, in a plain script and under the luv and
-- cqueues hosts.  The message is unchanged: it still says what failed.
-- ("limit" belongs to the limit obtains, which this release does not have.)
local R = require "support.redis"
local T = require "support.tls"
local P = require "support.proxy"
local Top = require "support.topology"
local H = require "support.hosts"

local fluxalock = require "fluxalock"

local HOSTS = { "plain", "luv", "cqueues" }

-- fn() in a plain script, or in a coroutine of a real luv or cqueues loop
local under = H.under

-- nil, a message that matches 'pattern', and 'code'
local function fails(code, pattern, v, msg, got)
  assert.is_nil(v, "expected a failure, got " .. tostring(v))
  assert.is_string(msg)
  assert.matches(pattern, msg)
  assert.equal(code, got, msg)
end

-- a child process that resets the proxy's connections as soon as a request
-- is in flight behind it (bytes arrived after 'rx0'): the connection
-- breaks mid-command.  The proxy stalls meanwhile, so the request waits
local function cut_when_sent(px)
  local rx0 = px:rx()
  return R.spawn(([[
    local socket = require "socket"
    local function ask(line)
      local c = assert(socket.connect("127.0.0.1", %d))
      c:settimeout(10)
      assert(c:send(line .. "\n"))
      local a = c:receive("*l")
      c:close()
      return a
    end
    local deadline = socket.gettime() + 20
    while tonumber(ask("rx")) <= %d do
      assert(socket.gettime() < deadline, "no request came")
      socket.sleep(0.005)
    end
    print(ask("cut"))
  ]]):format(px.control, rx0))
end

describe("error codes", function()
  local server, down_port

  lazy_setup(function()
    server = R.start()
    down_port = R.free_port()
  end)
  lazy_teardown(function()
    fluxalock.configure { host = false }
    if server then server:stop() end
  end)

  it("are listed in fluxalock.codes, each name mapping to itself", function()
    local names = {}
    for k, v in pairs(fluxalock.codes) do
      assert.equal(k, v)
      names[#names + 1] = k
    end
    table.sort(names)
    assert.same({ "auth", "connect", "io", "limit", "lost", "not_obtained", "quorum", "replicas",
                  "server", "timeout", "tls" }, names)
  end)

  for _, host in ipairs(HOSTS) do
    describe("(" .. host .. ")", function()
      it("not_obtained: the lock is held and wait ran out", function()
        local holder = assert(fluxalock.locker(server.url):obtain("held", 5))
        local v, msg, code = under(host, function()
          return fluxalock.locker { url = server.url }:obtain("held", 5, 0.05)
        end)
        assert.is_true(holder:release())
        assert.same({ nil, "not obtained", "not_obtained" }, { v, msg, code })
      end)

      it("connect: a refused port, for obtain and for a lock's calls", function()
        fails("connect", "^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused$", under(host, function()
          return fluxalock.locker { url = ("redis://127.0.0.1:%d/0"):format(down_port) }:obtain("k", 5)
        end))
        local s = R.start()
        local lock = assert(fluxalock.locker { url = s.url, connect_timeout = 0.5 }:obtain("gone", 5))
        s:stop()
        local r = { under(host, function()
          local t = table.pack(lock:ttl())
          local f = table.pack(lock:refresh(5))
          local e = table.pack(lock:release())
          return t, f, e
        end) }
        for _, t in ipairs(r) do
          fails("connect", "^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused$", table.unpack(t, 1, 3))
        end
      end)

      it("timeout: a SIGSTOPped server gives no reply within 'timeout'", function()
        local s = R.start()
        finally(function() s:stop() end)
        local lock = assert(fluxalock.locker { url = s.url, timeout = 0.3 }:obtain("frozen", 5))
        s:pause()
        local a, b = under(host, function()
          local l = fluxalock.locker { url = s.url, timeout = 0.3 }
          return table.pack(l:obtain("other", 5)), table.pack(lock:ttl())
        end)
        s:resume()
        fails("timeout", "^fluxalock: obtain 127%.0%.0%.1:%d+: timed out$", table.unpack(a, 1, 3))
        fails("timeout", "^fluxalock: ttl 127%.0%.0%.1:%d+: timed out$", table.unpack(b, 1, 3))
      end)

      it("io: the connection breaks mid-command (reset, or not Redis at all)", function()
        local px = P.start(server.port, "pass")
        finally(function() px:stop() end)
        local lock = assert(fluxalock.locker { url = px.url }:obtain("cut:" .. host, 5))
        px:mode("stall")
        local child = cut_when_sent(px)
        local v, msg, code = under(host, function() return lock:ttl() end)
        assert.equal("ok\n", child:wait(30))
        fails("io", "^fluxalock: ttl 127%.0%.0%.1:%d+: ", v, msg, code) -- reset, or closed
        px:mode("garbage", "2b4f4b0d0a") -- "+OK\r\n": not the script's answer
        fails("io", "^fluxalock: obtain 127%.0%.0%.1:%d+: unexpected reply$", under(host, function()
          return fluxalock.locker { url = px.url }:obtain("garbage", 5)
        end))
        px:mode("garbage", "2a7a0d0a") -- "*z\r\n": no RESP
        fails("io", "^fluxalock: obtain 127%.0%.0%.1:%d+: protocol error: ", under(host, function()
          return fluxalock.locker { url = px.url }:obtain("garbage", 5)
        end))
        px:mode("pass")
        assert.is_true(lock:release())
      end)

      it("auth: a wrong password, a wrong ACL user's password, or none given", function()
        local secret = "pw-" .. math.random(1e9)
        local s = R.start { args = { "--requirepass", secret }, password = secret }
        finally(function() s:stop() end)
        s:cli("ACL", "SETUSER", "coder", "on", ">right", "~*", "&*", "+@all")
        local r = { under(host, function()
          return table.pack(fluxalock.locker { url = s.url, password = secret .. "x" }:obtain("k", 5)),
            table.pack(fluxalock.locker { url = s.url, username = "coder", password = "wrong" }:obtain("k", 5)),
            table.pack(fluxalock.locker { url = s.url }:obtain("k", 5))
        end) }
        fails("auth", "^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", table.unpack(r[1], 1, 3))
        fails("auth", "^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", table.unpack(r[2], 1, 3))
        fails("auth", "^fluxalock: obtain 127%.0%.0%.1:%d+: NOAUTH", table.unpack(r[3], 1, 3))
        for _, t in ipairs(r) do assert.is_nil(t[2]:find(secret, 1, true)) end
      end)

      it("tls: a certificate from a CA the pool does not trust", function()
        local c = T.certs()
        local s = T.start { cert = c.wrong, key = c.wrong_key }
        finally(function() s:stop() end)
        fails("tls", "^fluxalock: connect 127%.0%.0%.1:%d+: certificate verify failed: ", under(host, function()
          return fluxalock.locker { url = s.tls_url, tls = { ca_file = c.ca } }:obtain("k", 5)
        end))
        -- and a plain server asked for TLS (the handshake fails, not the connect)
        fails("tls", "^fluxalock: connect 127%.0%.0%.1:%d+: ", under(host, function()
          return fluxalock.locker { url = server.url, tls = { ca_file = c.ca } }:obtain("k", 5)
        end))
      end)

      it("server: an error reply (ACL NOPERM on a lock's calls, OOM on obtain)", function()
        local user = "limited" .. host
        server:cli("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
        finally(function() server:cli("ACL", "DELUSER", user) end)
        local lock = assert(fluxalock.locker { url = server.url, username = user, password = "pw" }
          :obtain("acl:" .. host, 5))
        server:cli("ACL", "SETUSER", user, "-evalsha", "-eval")
        local t, f = under(host, function() return table.pack(lock:ttl()), table.pack(lock:refresh(5)) end)
        fails("server", "^fluxalock: ttl 127%.0%.0%.1:%d+: NOPERM", table.unpack(t, 1, 3))
        fails("server", "^fluxalock: refresh 127%.0%.0%.1:%d+: NOPERM", table.unpack(f, 1, 3))
        server:cli("ACL", "SETUSER", user, "+@all")
        assert.is_true(lock:release())
        local s = R.start()
        finally(function() s:stop() end)
        s:cli("CONFIG", "SET", "maxmemory", "1")
        fails("server", "^fluxalock: obtain 127%.0%.0%.1:%d+: OOM ", under(host, function()
          return fluxalock.locker { url = s.url }:obtain("oom", 5)
        end))
      end)

      it("replicas: fewer replicas than 'replicas' acknowledged", function()
        fails("replicas", "^fluxalock: obtain 127%.0%.0%.1:%d+: 0 of 1 replicas acknowledged the lock$",
          under(host, function()
            return fluxalock.locker { url = server.url, replicas = 1, replica_timeout = 0.05 }:obtain("r", 5)
          end))
        assert.equal("0", server:cli("EXISTS", "r")) -- undone
      end)

      it("lost: the lease of a renewed lock ran out before its renewal could start", function()
        -- the answer comes 150 ms after the request went out: after the ttl
        local px = P.start(server.port, "slow", 150)
        finally(function() px:stop() end)
        local stats
        fails("lost", "^fluxalock: renew: the lock was lost before its renewal started$", under(host, function()
          local l = fluxalock.locker { url = px.url }
          local v, msg, code = l:obtain("late:" .. host, 0.1, 0, { renew = true })
          stats = l:stats()
          return v, msg, code
        end))
        assert.equal("0", server:cli("EXISTS", "late:" .. host))
        assert.same({ 0, 1 }, { stats.obtained, stats.errors }) -- counted as the failure it returned
      end)
    end)
  end

  describe("on a Redlock pool", function()
    local nodes = {}
    lazy_setup(function() for i = 1, 3 do nodes[i] = R.start() end end)
    lazy_teardown(function() for _, n in ipairs(nodes) do n:stop() end end)

    local function redlock()
      local urls = {}
      for i, n in ipairs(nodes) do urls[i] = n.url end
      return fluxalock.locker { redlock = urls, timeout = 0.3, connect_timeout = 0.3 }
    end

    for _, host in ipairs(HOSTS) do
      it("(" .. host .. ") not_obtained, then quorum with a majority down (obtain and a lock's calls)", function()
        local holder = assert(redlock():obtain("rl", 5))
        assert.same({ nil, "not obtained", "not_obtained" }, { under(host, function()
          return redlock():obtain("rl", 5)
        end) })
        assert.is_true(holder:release())
        local lock = assert(redlock():obtain("rl:" .. host, 5))
        nodes[2]:pause()
        nodes[3]:pause()
        local a, t = under(host, function()
          return table.pack(redlock():obtain("rl2", 5)), table.pack(lock:ttl())
        end)
        nodes[2]:resume()
        nodes[3]:resume()
        fails("quorum", "^fluxalock: obtain redlock%(3 nodes%): 2 of 3 nodes failed, 2 needed %(fluxalock: .*timed out%)$",
          table.unpack(a, 1, 3))
        fails("quorum", "^fluxalock: ttl redlock%(3 nodes%): 2 of 3 nodes failed, 2 needed ", table.unpack(t, 1, 3))
        assert.is_true(lock:release())
      end)
    end

    it("a one-node Redlock gives its node's own code", function()
      local l = fluxalock.locker { redlock = { ("redis://127.0.0.1:%d/0"):format(down_port) } }
      fails("connect", "^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused$", l:obtain("k", 5))
    end)
  end)

  describe("on a Sentinel pool", function()
    local env = Top.setup_sentinels("codes")

    local function sentinel(extra)
      local o = { sentinels = { env.sentinels[1].addr }, master = "codes", timeout = 0.3, connect_timeout = 0.3 }
      for k, v in pairs(extra or {}) do o[k] = v end
      return fluxalock.locker(o)
    end

    for _, host in ipairs(HOSTS) do
      it("(" .. host .. ") connect, server, timeout, not_obtained", function()
        -- no sentinel reachable
        fails("connect", "^fluxalock: sentinel master 'codes': not found %(fluxalock: connect ", under(host, function()
          return fluxalock.locker { sentinels = { ("127.0.0.1:%d"):format(down_port) }, master = "codes" }:obtain("k", 5)
        end))
        -- a "sentinel" that is a plain redis-server: it answers, with an error
        fails("server", "^fluxalock: sentinel master 'codes': not found %(fluxalock: call ", under(host, function()
          return fluxalock.locker { sentinels = { ("127.0.0.1:%d"):format(server.port) }, master = "codes" }:obtain("k", 5)
        end))
        local holder = assert(sentinel():obtain("s", 5))
        assert.same({ nil, "not obtained", "not_obtained" }, { under(host, function()
          return sentinel():obtain("s", 5)
        end) })
        env.master:pause()
        local v, msg, code = under(host, function() return holder:ttl() end)
        env.master:resume()
        fails("timeout", "timed out", v, msg, code)
        assert.is_true(holder:release())
        env.master:cli("CONFIG", "SET", "maxmemory", "1")
        local a = table.pack(under(host, function() return sentinel():obtain("oom", 5) end))
        env.master:cli("CONFIG", "SET", "maxmemory", "0")
        fails("server", "^fluxalock: obtain 127%.0%.0%.1:%d+: OOM ", table.unpack(a, 1, 3))
      end)
    end
  end)

  describe("on a Cluster pool", function()
    local cluster
    lazy_setup(function() cluster = Top.cluster() end)
    lazy_teardown(function() if cluster then cluster:stop() end end)

    local function clustered()
      return fluxalock.locker { cluster = cluster.seeds, timeout = 0.3, connect_timeout = 0.3 }
    end

    for _, host in ipairs(HOSTS) do
      it("(" .. host .. ") connect, not_obtained, server, timeout", function()
        fails("connect", "^fluxalock: cluster slots: no node answered %(fluxalock: connect ", under(host, function()
          return fluxalock.locker { cluster = { ("127.0.0.1:%d"):format(down_port) } }:obtain("k", 5)
        end))
        local key = "c:" .. host
        local holder = assert(clustered():obtain(key, 5))
        assert.same({ nil, "not obtained", "not_obtained" }, { under(host, function()
          return clustered():obtain(key, 5)
        end) })
        local owner = cluster:master_of(cluster:slot(key))
        local function signal(sig) os.execute(("kill -%s %d"):format(sig, owner.pid)) end
        signal("STOP") -- (by its PID; far shorter than the cluster's node timeout)
        finally(function() signal("CONT") end)
        local v, msg, code = under(host, function() return holder:ttl() end)
        signal("CONT")
        fails("timeout", "^fluxalock: ttl 127%.0%.0%.1:%d+: timed out$", v, msg, code)
        assert.is_true(holder:release())
        owner:cli("CONFIG", "SET", "maxmemory", "1")
        local a = table.pack(under(host, function() return clustered():obtain(key, 5) end))
        owner:cli("CONFIG", "SET", "maxmemory", "0")
        fails("server", "^fluxalock: obtain 127%.0%.0%.1:%d+: OOM ", table.unpack(a, 1, 3))
      end)
    end
  end)

  describe("in the debug log", function()
    it("each failed event carries the code its call returned", function()
      local events = {}
      local l = fluxalock.locker { url = ("redis://127.0.0.1:%d/0"):format(down_port),
                                   log = function(e) events[#events + 1] = e end }
      local _, _, code = l:obtain("k", 5)
      assert.equal("connect", code)
      assert.equal(1, #events)
      assert.equal("connect", events[1].code)
    end)

    it("FLUXALOCK_DEBUG=1 prints the code", function()
      local child = R.spawn(([[
        local fluxalock = require "fluxalock"
        local l = fluxalock.locker { url = %q, timeout = 0.3 }
        l:obtain("k", 5)
      ]]):format(("redis://127.0.0.1:%d/0"):format(down_port)), { FLUXALOCK_DEBUG = "1" })
      assert.matches('obtain "k" [%d.]+ ms %-> failed %[connect%]: connect 127%.0%.0%.1:%d+: Connection refused\n',
        child:wait())
    end)
  end)
end)
