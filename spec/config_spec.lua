-- Configuration: URL parsing, strict validation, configure's all-or-nothing
-- rule, the FLUXALOCK_URL default and locker identity.  No Redis is needed
-- here except where a locker must prove where it connects (a child process
-- for FLUXALOCK_URL).
local R = require "support.redis"
local fluxalock = require "fluxalock"
local config = require "fluxalock.config"

-- the message of a raised error, or fail if nothing was raised
local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error, got none")
  return tostring(err)
end

local function configure_error(pool)
  return raised(fluxalock.configure, { pools = { jobs = pool } })
end

describe("a pool URL", function()
  local function parse(url) return config.pool("p", url) end

  it("gives host, port and db", function()
    local o = parse("redis://10.1.2.3:6380/4")
    assert.same({ "10.1.2.3", 6380, 4 }, { o.host, o.port, o.db })
    assert.is_nil(o.path)
  end)

  it("rediss:// turns TLS on (verify 'full'), port 6379 as for redis://", function()
    local o = parse("rediss://:pw@cache.example.org/2")
    assert.same({ "cache.example.org", 6379, 2, "pw" }, { o.host, o.port, o.db, o.password })
    assert.same({ verify = "full" }, o.tls)
    assert.is_nil(parse("redis://cache.example.org").tls)
  end)

  it("takes TLS keys from a rediss:// query, %-escaped; the tls table overrides them", function()
    local o = parse("rediss://h:6380/0?server_name=r%2Eexample&verify=ca")
    assert.same({ server_name = "r.example", verify = "ca" }, o.tls)
    o = config.pool("p", { url = "rediss://h?verify=ca&server_name=a", tls = { verify = "none" } })
    assert.same({ server_name = "a", verify = "none" }, o.tls)
    o = config.pool("p", { url = "redis://h", tls = true }) -- tls alone turns it on too
    assert.same({ verify = "full" }, o.tls)
  end)

  it("gives every Redlock node the pool's tls, and TLS to its rediss:// nodes", function()
    local o = config.pool("p", { redlock = { "rediss://a", "redis://b" } })
    assert.same({ verify = "full" }, o.nodes[1].tls)
    assert.is_nil(o.nodes[2].tls)
    o = config.pool("p", { redlock = { "redis://a", "redis://b" }, tls = { verify = "ca" } })
    assert.same({ verify = "ca" }, o.nodes[2].tls)
  end)

  it("defaults port 6379 and db 0", function()
    local o = parse("redis://example.org")
    assert.same({ "example.org", 6379, 0 }, { o.host, o.port, o.db })
  end)

  it("reads user:password@ as an ACL user and password", function()
    local o = parse("redis://alice:s3cret@h:1/2")
    assert.equal("alice", o.username)
    assert.equal("s3cret", o.password)
  end)

  it("reads :password@ as a password without a user", function()
    local o = parse("redis://:s3cret@h")
    assert.is_nil(o.username)
    assert.equal("s3cret", o.password)
    assert.equal("h", o.host)
  end)

  it("reads the old secret@host form as a password", function()
    local o = parse("redis://s3cret@h:7000")
    assert.is_nil(o.username)
    assert.equal("s3cret", o.password)
    assert.same({ "h", 7000 }, { o.host, o.port })
  end)

  it("unescapes %XX in the user and password", function()
    local o = parse("redis://b%40b:p%40ss%2Fw@h")
    assert.equal("b@b", o.username)
    assert.equal("p@ss/w", o.password)
  end)

  it("takes a bracketed IPv6 address", function()
    local o = parse("redis://[::1]:6390/3")
    assert.same({ "::1", 6390, 3 }, { o.host, o.port, o.db })
    assert.equal("[::1]:6390", config.where(o))
  end)

  it("takes a Unix socket path with an optional db", function()
    local o = parse("unix:///run/redis/redis.sock?db=5")
    assert.equal("/run/redis/redis.sock", o.path)
    assert.equal(5, o.db)
    assert.is_nil(o.host)
    assert.is_nil(o.port)
    assert.equal(0, parse("unix:///tmp/r.sock").db)
  end)

  it("is overridden by the keys of a pool table", function()
    local o = config.pool("p", { url = "redis://h:1/2", db = 7, port = 9 })
    assert.same({ "h", 9, 7 }, { o.host, o.port, o.db })
  end)

  it("fills in the documented defaults", function()
    local o = config.pool("p", {})
    assert.same({ "127.0.0.1", 6379, 0, 1, 1, "" },
      { o.host, o.port, o.db, o.connect_timeout, o.timeout, o.prefix })
  end)
end)

describe("configure rejects", function()
  -- each case: a pool definition, and the option its error must name
  local cases = {
    { "a bad scheme", "http://h:1", "url" },
    { "an unknown rediss:// query parameter", "rediss://h:1?cafile=/x", "url" },
    { "a TLS query parameter on redis://", "redis://h:1?verify=ca", "url" },
    { "tls that is neither true nor a table", { tls = "yes" }, "tls" },
    { "an unknown tls key", { tls = { cafile = "/x" } }, "tls" },
    { "a tls key that is not a string", { tls = { ca_file = 1 } }, "tls.ca_file" },
    { "a tls verify mode not known", { tls = { verify = "strict" } }, "tls.verify" },
    { "a rediss:// verify mode not known", "rediss://h:1?verify=off", "tls.verify" },
    { "a cert_file without its key_file", { tls = { cert_file = "/etc/hostname" } }, "tls.cert_file" },
    { "a key_file without its cert_file", { tls = { key_file = "/etc/hostname" } }, "tls.key_file" },
    { "a ca_file that cannot be read", { tls = { ca_file = "/nonexistent/ca.pem" } }, "tls.ca_file" },
    { "a malformed port", "redis://h:12x", "url" },
    { "a port out of range", "redis://h:70000", "port" },
    { "a db that is not a number", "redis://h/one", "url" },
    { "a negative db in the URL", "redis://h/-1", "url" },
    { "a malformed unix db", "unix:///tmp/r.sock?db=x", "url" },
    { "an unknown unix query parameter", "unix:///tmp/r.sock?size=1", "url" },
    { "a relative socket path", "unix://tmp/r.sock", "url" },
    { "a string without a scheme", "localhost:6379", "url" },
    { "an unknown option", { hots = "h" }, "hots" },
    { "a port given as a string", { port = "6379" }, "port" },
    { "a fractional port", { port = 6379.5 }, "port" },
    { "a db given as a string", { db = "2" }, "db" },
    { "a negative db", { db = -1 }, "db" },
    { "a host that is not a string", { host = 127 }, "host" },
    { "an empty host", { host = "" }, "host" },
    { "an empty socket path", { path = "" }, "path" },
    { "a timeout given as a string", { timeout = "1" }, "timeout" },
    { "a NaN timeout", { timeout = 0 / 0 }, "timeout" },
    { "a negative timeout", { timeout = -1 }, "timeout" },
    { "a zero connect_timeout", { connect_timeout = 0 }, "connect_timeout" },
    { "a timeout below a millisecond", { timeout = 0.0001 }, "timeout" },
    { "an infinite timeout", { timeout = math.huge }, "timeout" },
    { "a zero retry_step", { retry_step = 0 }, "retry_step" },
    { "retry_max below retry_step", { retry_step = 0.5, retry_max = 0.1 }, "retry_max" },
    { "a prefix with an unmatched '{'", { prefix = "jobs{:" }, "prefix" },
    { "a prefix with an empty '{}'", { prefix = "{}:" }, "prefix" },
    { "a prefix that is not a string", { prefix = 1 }, "prefix" },
    { "a username without a password", { username = "alice" }, "username" },
    { "a url that is not a string", { url = 5 }, "url" },
  }
  for _, case in ipairs(cases) do
    it(case[1] .. ", naming the pool and the option", function()
      local err = configure_error(case[2])
      assert.matches("pool 'jobs'", err, 1, true)
      assert.matches("option '" .. case[3] .. "'", err, 1, true)
      -- a validation message, not a Lua runtime error from inside the checker
      assert.not_matches("attempt to", err, 1, true)
    end)
  end

  it("a pool that is neither a URL nor a table", function()
    local err = configure_error(42)
    assert.matches("pool 'jobs'", err, 1, true)
    assert.matches("URL string or a table", err, 1, true)
  end)

  it("a config that is not a table, or has unknown keys", function()
    assert.matches("must be a table", raised(fluxalock.configure, "redis://h"))
    assert.matches("unknown configuration key 'pool'",
      raised(fluxalock.configure, { pool = { default = "redis://h" } }), 1, true)
    assert.matches("'pools' must be a table", raised(fluxalock.configure, { pools = "x" }), 1, true)
  end)

  it("accepts a prefix that holds a hash tag", function()
    assert.is_true(fluxalock.configure { pools = { tagged = { prefix = "{jobs}:" } } })
  end)
end)

describe("no error message carries a password", function()
  local secret = "hunter2-secret"
  local bad = {
    "redis://alice:" .. secret .. "@h:notaport",
    "redis://:" .. secret .. "@h/db",
    "redis://" .. secret .. "@h:1:2",
    "http://alice:" .. secret .. "@h",
    "rediss://:" .. secret .. "@h:bad",
    -- a password holding the URL's own separators, unescaped
    "redis://alice:" .. secret .. "/x@h:bad",
    "redis://alice:x@" .. secret .. "@h:bad",
  }
  for _, url in ipairs(bad) do
    it("in configure nor locker, for " .. url:gsub(secret, "<secret>"), function()
      local e1 = raised(fluxalock.configure, { pools = { p = url } })
      local e2 = raised(fluxalock.locker, url)
      local e3 = raised(fluxalock.configure, { pools = { p = { url = url, db = 1 } } })
      for _, e in ipairs { e1, e2, e3 } do
        assert.not_matches(secret, e, 1, true)
        assert.not_matches("hunter2", e, 1, true)
      end
      assert.matches("^bad argument #1 to 'locker'", e2)
    end)
  end

  it("nor for a wrongly typed option next to a password", function()
    local e = raised(fluxalock.configure, { pools = { p = { password = secret, port = "x" } } })
    assert.not_matches(secret, e, 1, true)
    assert.matches("option 'port'", e, 1, true)
  end)

  it("and tostring(locker) shows where, never the password", function()
    local l = fluxalock.locker("redis://alice:" .. secret .. "@127.0.0.1:6390/2")
    local s = tostring(l)
    assert.matches("127.0.0.1:6390", s, 1, true)
    assert.not_matches(secret, s, 1, true)
    assert.not_matches("alice", s, 1, true)
    fluxalock.configure { pools = { withpw = { password = secret, port = 6391 } } }
    s = tostring(fluxalock.locker("withpw"))
    assert.equal("fluxalock.Locker: withpw (127.0.0.1:6391)", s)
  end)
end)

describe("configure", function()
  it("returns true", function()
    assert.is_true(fluxalock.configure { pools = { a = "redis://127.0.0.1:7001" } })
  end)

  it("is all-or-nothing: an invalid config changes nothing", function()
    fluxalock.configure { pools = { keep = "redis://127.0.0.1:7002/1" } }
    local before = fluxalock.locker("keep")
    local err = raised(fluxalock.configure, {
      pools = {
        keep = "redis://127.0.0.1:7003/1",  -- valid, would redefine 'keep'
        fresh = "redis://127.0.0.1:7004",   -- valid, would add 'fresh'
        broken = { port = "nope" },         -- invalid
      },
    })
    assert.matches("pool 'broken'", err, 1, true)
    assert.equal(before, fluxalock.locker("keep"))
    assert.equal("fluxalock.Locker: keep (127.0.0.1:7002)", tostring(fluxalock.locker("keep")))
    assert.matches("unknown pool 'fresh'", raised(fluxalock.locker, "fresh"), 1, true)
  end)

  it("keeps the locker of a pool redefined identically, replaces a changed one", function()
    fluxalock.configure { pools = { same = { host = "127.0.0.1", port = 7005, prefix = "x:" } } }
    local l1 = fluxalock.locker("same")
    assert.equal(l1, fluxalock.locker("same"))
    fluxalock.configure { pools = { same = { host = "127.0.0.1", port = 7005, prefix = "x:" } } }
    assert.equal(l1, fluxalock.locker("same"))
    -- the same settings spelt as a URL are the same pool
    fluxalock.configure { pools = { same = { url = "redis://127.0.0.1:7005/0", prefix = "x:" } } }
    assert.equal(l1, fluxalock.locker("same"))
    fluxalock.configure { pools = { same = { host = "127.0.0.1", port = 7005, prefix = "y:" } } }
    local l2 = fluxalock.locker("same")
    assert.not_equal(l1, l2)
    assert.equal(l2, fluxalock.locker("same"))
  end)

  it("replaces the locker when a tls setting changes, keeps it when it is the same", function()
    fluxalock.configure { pools = { t = { url = "rediss://127.0.0.1:7006", tls = { verify = "ca" } } } }
    local l1 = fluxalock.locker("t")
    fluxalock.configure { pools = { t = "rediss://127.0.0.1:7006?verify=ca" } }
    assert.equal(l1, fluxalock.locker("t"))
    fluxalock.configure { pools = { t = { url = "rediss://127.0.0.1:7006", tls = { verify = "none" } } } }
    assert.not_equal(l1, fluxalock.locker("t"))
  end)

  it("leaves pools it does not mention alone", function()
    fluxalock.configure { pools = { one = "redis://127.0.0.1:7006" } }
    local one = fluxalock.locker("one")
    fluxalock.configure { pools = { two = "redis://127.0.0.1:7007" } }
    assert.equal(one, fluxalock.locker("one"))
  end)
end)

describe("fluxalock.locker", function()
  it("gives one locker per configured pool, and the default pool by default", function()
    fluxalock.configure { pools = { default = "redis://127.0.0.1:7010", jobs = "redis://127.0.0.1:7011" } }
    assert.equal(fluxalock.locker(), fluxalock.locker("default"))
    assert.equal(fluxalock.locker(), fluxalock.locker(fluxalock.DEFAULT_POOL))
    assert.equal(fluxalock.locker("jobs"), fluxalock.locker("jobs"))
    assert.not_equal(fluxalock.locker("jobs"), fluxalock.locker())
    assert.equal("fluxalock.Locker: jobs (127.0.0.1:7011)", tostring(fluxalock.locker("jobs")))
  end)

  it("takes a URL or an options table", function()
    local l = fluxalock.locker("redis://127.0.0.1:7012/3")
    assert.equal("table", type(l))
    assert.equal("function", type(l.obtain))
    assert.matches("127.0.0.1:7012", tostring(l), 1, true)
    local t = fluxalock.locker { port = 7013, db = 1 }
    assert.matches("127.0.0.1:7013", tostring(t), 1, true)
    local u = fluxalock.locker { path = "/tmp/nowhere.sock" }
    assert.matches("unix:/tmp/nowhere.sock", tostring(u), 1, true)
  end)

  it("raises for an unknown pool name, a bad URL, a bad table or a wrong type", function()
    assert.equal("bad argument #1 to 'locker' (unknown pool 'nope')",
      raised(fluxalock.locker, "nope"):gsub("^[^:]*:%d+: ", ""))
    assert.matches("^bad argument #1 to 'locker' %(.*option 'url'", raised(fluxalock.locker, "ftp://h"))
    assert.matches("^bad argument #1 to 'locker' %(.*option 'port'", raised(fluxalock.locker, { port = 0 }))
    assert.matches("^bad argument #1 to 'locker' %(.*got number", raised(fluxalock.locker, 5))
  end)

  it("does not connect: an unreachable server never makes it fail", function()
    -- nothing listens there, and a non-routable address would hang a connect
    local l = fluxalock.locker("redis://127.0.0.1:1/0")
    assert.truthy(l)
    fluxalock.configure { pools = { away = { host = "10.255.255.1", connect_timeout = 0.05 } } }
    assert.truthy(fluxalock.locker("away"))
    assert.truthy(fluxalock.locker { path = "/nonexistent/redis.sock" })
  end)

  it("exports the documented constants", function()
    assert.equal("not obtained", fluxalock.NOT_OBTAINED)
    assert.equal("default", fluxalock.DEFAULT_POOL)
    assert.matches("^fluxalock %d+%.%d+%.%d+", fluxalock._VERSION)
  end)
end)

describe("the default pool without configure", function()
  local function where_in_child(env)
    local p = R.spawn([[
      local fluxalock = require "fluxalock"
      print(tostring(fluxalock.locker()))
    ]], env)
    return (p:wait(20):gsub("%s+$", ""))
  end

  it("is redis://127.0.0.1:6379/0 when FLUXALOCK_URL is unset", function()
    -- whoever runs the suite may have FLUXALOCK_URL set: the child hides it
    local p = R.spawn([[
      local getenv = os.getenv
      os.getenv = function(k) if k ~= "FLUXALOCK_URL" then return getenv(k) end end
      local fluxalock = require "fluxalock"
      print(tostring(fluxalock.locker()))
    ]])
    assert.equal("fluxalock.Locker: default (127.0.0.1:6379)", (p:wait(20):gsub("%s+$", "")))
  end)

  it("counts an empty FLUXALOCK_URL as unset", function()
    assert.equal("fluxalock.Locker: default (127.0.0.1:6379)", where_in_child { FLUXALOCK_URL = "" })
  end)

  it("is FLUXALOCK_URL when set, and the locker really uses it", function()
    local server = R.start()
    local ok, err = pcall(function()
      assert.equal("fluxalock.Locker: default (127.0.0.1:" .. server.port .. ")",
        where_in_child { FLUXALOCK_URL = "redis://127.0.0.1:" .. server.port .. "/3" })
      local p = R.spawn([[
        local fluxalock = require "fluxalock"
        local lock = assert(fluxalock.locker():obtain("from-env", 30))
        io.write(lock:token())
        io.stdout:flush()
        os.exit(0, false) -- leave without closing the state: no __gc release
      ]], { FLUXALOCK_URL = "redis://127.0.0.1:" .. server.port .. "/3" })
      local token = p:wait(20)
      assert.matches("^%x+$", token)
      -- the child left without releasing: its lock is in db 3, not in db 0
      assert.matches("^" .. token, server:cli("-n", "3", "GET", "from-env"))
      assert.equal("0", server:cli("-n", "0", "EXISTS", "from-env"))
    end)
    server:stop()
    assert(ok, err)
  end)
end)
