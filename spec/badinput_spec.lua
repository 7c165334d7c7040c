-- Bad input, exhaustively: every argument and every option of the API with
-- wrong values.  Each row here is a row of the table in docs/reliability.md (Bad input)
-- ("reliability (issue 5)"): misuse raises an argerror-style message naming
-- the argument or the pool and option; what only Redis can refuse comes back
-- as nil, "fluxalock: ..."; the edges that are valid work.
local R = require "support.redis"

local NAN, INF = 0 / 0, math.huge

-- the message of the error f raises, without "file:line: "
local function raised(f)
  local ok, err = pcall(f)
  assert(not ok, "expected an error, got none")
  assert.equal("string", type(err))
  return (err:gsub("^[^\n]-:%d+: ", ""))
end

describe("bad input", function()
  local server, fl, locker
  R.setup({}, function(e) server, fl, locker = e.server, e.fluxalock, e.locker end)

  describe("to locker:obtain(key, ttl, wait)", function()
    local rows = {
      -- key
      { "key nil", { nil, 1 }, "bad argument #1 to 'obtain' (key must be a string, got nil)" },
      { "key number", { 7, 1 }, "bad argument #1 to 'obtain' (key must be a string, got number)" },
      { "key table", { {}, 1 }, "bad argument #1 to 'obtain' (key must be a string, got table)" },
      { "key boolean", { true, 1 }, "bad argument #1 to 'obtain' (key must be a string, got boolean)" },
      { "key empty", { "", 1 }, "bad argument #1 to 'obtain' (key must not be empty)" },
      -- ttl
      { "ttl nil", { "k" }, "bad argument #2 to 'obtain' (ttl must be a number of seconds, got nil)" },
      { "ttl string", { "k", "5" }, "bad argument #2 to 'obtain' (ttl must be a number of seconds, got string)" },
      { "ttl NaN", { "k", NAN }, "bad argument #2 to 'obtain' (ttl must not be NaN)" },
      { "ttl +inf", { "k", INF }, "bad argument #2 to 'obtain' (ttl must not exceed 1e9 seconds)" },
      { "ttl -inf", { "k", -INF }, "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "ttl negative", { "k", -1 }, "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "ttl zero", { "k", 0 }, "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "ttl below 1 ms", { "k", 0.0009 }, "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
      { "ttl above 1e9 s", { "k", 1e9 + 1 }, "bad argument #2 to 'obtain' (ttl must not exceed 1e9 seconds)" },
      { "ttl integer overflow", { "k", math.maxinteger }, "bad argument #2 to 'obtain' (ttl must not exceed 1e9 seconds)" },
      -- wait
      { "wait string", { "k", 5, "1" }, "bad argument #3 to 'obtain' (wait timeout must be a number of seconds, got string)" },
      { "wait table", { "k", 5, {} }, "bad argument #3 to 'obtain' (wait timeout must be a number of seconds, got table)" },
      { "wait NaN", { "k", 5, NAN }, "bad argument #3 to 'obtain' (wait timeout must not be NaN)" },
      { "wait negative", { "k", 5, -1 }, "bad argument #3 to 'obtain' (wait timeout must not be negative)" },
      { "wait -inf", { "k", 5, -INF }, "bad argument #3 to 'obtain' (wait timeout must not be negative)" },
      { "wait +inf", { "k", 5, INF }, "bad argument #3 to 'obtain' (wait timeout must not exceed ttl)" },
      { "wait above ttl", { "k", 5, 5.001 }, "bad argument #3 to 'obtain' (wait timeout must not exceed ttl)" },
    }
    for _, row in ipairs(rows) do
      it("raises for " .. row[1], function()
        local args = row[2]
        assert.equal(row[3], raised(function() return locker:obtain(args[1], args[2], args[3]) end))
      end)
    end

    it("raises for a call without self (locker.obtain)", function()
      assert.equal("calling 'obtain' on bad self (fluxalock.Locker expected, got string)",
        raised(function() return locker.obtain("k", 5) end))
    end)

    it("accepts the edges: 1 ms ttl, 1e9 s ttl, wait 0 and wait == ttl", function()
      local a = assert(locker:obtain("edge-1ms", 0.001))
      local b = assert(locker:obtain("edge-1e9", 1e9))
      local left = assert(b:ttl())
      assert.is_true(left > 1e9 - 10 and left <= 1e9)
      assert.is_true(b:refresh(1e9, { replace = true }))
      assert.is_true(b:release())
      local c = assert(locker:obtain("edge-wait", 0.5, 0))
      local d = assert(locker:obtain("edge-wait2", 0.5, 0.5))
      for _, l in ipairs { c, d } do assert.is_true(l:release()) end
      assert.is_boolean(a:release())
    end)

    it("takes any bytes as a key: NUL bytes, binary, 1 MB", function()
      for _, key in ipairs { "a\0b", "\0", "\255\254{}\r\n*1\r\n", string.rep("x", 1024 * 1024) } do
        local lock = assert(locker:obtain(key, 5))
        assert.equal(key, lock:key())
        assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain(key, 5) })
        assert.is_true(lock:release())
      end
      -- "a\0b" and "a" are different locks
      local ab = assert(locker:obtain("a\0b", 5))
      local a = assert(locker:obtain("a", 5))
      assert.is_true(ab:release())
      assert.is_true(a:release())
    end)

    it("returns nil, message for a key Redis refuses (above 512 MB is not sent)", function()
      -- Redis refuses a bulk string above proto-max-bulk-len; shrink the
      -- limit instead of building 512 MB
      assert.equal("OK", server:cli("CONFIG", "SET", "proto-max-bulk-len", "1048576"))
      finally(function() server:cli("CONFIG", "SET", "proto-max-bulk-len", "536870912") end)
      local lock, err = locker:obtain(string.rep("y", 2 * 1024 * 1024), 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: obtain 127%.0%.0%.1:%d+: ", err)
      -- Redis closes a connection after a protocol error: it is dropped at
      -- once, not left for the next call to race that close
      assert.equal(0, (locker._pool:connections()))
      -- the connection is replaced: the next call works
      lock = assert(locker:obtain("after-huge", 5))
      assert.is_true(lock:release())
    end)
  end)

  describe("to lock methods", function()
    local lock
    before_each(function() lock = assert(locker:obtain("m", 30)) end)
    after_each(function() lock:release() end)

    local rows = {
      { "refresh ttl nil", function(l) return l:refresh() end, "bad argument #1 to 'refresh' (ttl must be a number of seconds, got no value)" },
      { "refresh ttl string", function(l) return l:refresh("5") end, "bad argument #1 to 'refresh' (ttl must be a number of seconds, got string)" },
      { "refresh ttl NaN", function(l) return l:refresh(NAN) end, "bad argument #1 to 'refresh' (ttl must not be NaN)" },
      { "refresh ttl +inf", function(l) return l:refresh(INF) end, "bad argument #1 to 'refresh' (ttl must not exceed 1e9 seconds)" },
      { "refresh ttl -inf", function(l) return l:refresh(-INF) end, "bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)" },
      { "refresh ttl zero", function(l) return l:refresh(0) end, "bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)" },
      { "refresh ttl negative", function(l) return l:refresh(-2) end, "bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)" },
      { "refresh ttl below 1 ms", function(l) return l:refresh(0.0002) end, "bad argument #1 to 'refresh' (ttl must be at least 0.001 seconds)" },
      { "refresh ttl above 1e9 s", function(l) return l:refresh(2e9) end, "bad argument #1 to 'refresh' (ttl must not exceed 1e9 seconds)" },
      { "refresh opts not a table", function(l) return l:refresh(1, true) end, "bad argument #2 to 'refresh' (table or nil expected, got boolean)" },
      { "refresh unknown option", function(l) return l:refresh(1, { extend = true }) end, "bad argument #2 to 'refresh' (unknown option 'extend')" },
      { "refresh replace not boolean", function(l) return l:refresh(1, { replace = 1 }) end, "bad argument #2 to 'refresh' (option 'replace' must be a boolean)" },
      { "release on a non-lock", function() return lock.release({}) end, "bad argument #1 to 'release' (fluxalock.Lock expected, got table)" },
      { "ttl on nil", function() return lock.ttl(nil) end, "bad argument #1 to 'ttl' (fluxalock.Lock expected, got nil)" },
      { "refresh on a locker", function() return lock.refresh(locker, 1) end, "bad argument #1 to 'refresh' (fluxalock.Lock expected, got fluxalock.Locker)" },
      { "fence on a string", function() return lock.fence("x") end, "bad argument #1 to 'fence' (fluxalock.Lock expected, got string)" },
    }
    for _, row in ipairs(rows) do
      it("raises for " .. row[1], function()
        assert.equal(row[3], raised(function() return row[2](lock) end))
        assert.is_true(lock:held())
      end)
    end
  end)

  describe("to configure and locker", function()
    local function conf_error(pool)
      return raised(function() fl.configure { pools = { p = pool } } end)
    end
    local rows = {
      -- option, value, message (after "fluxalock.configure: pool 'p': ")
      { "unknown option", { hots = "x" }, "option 'hots' is not a known option" },
      { "url number", { url = 5 }, "option 'url' must be a string, got number" },
      { "url without scheme", "localhost:6379", "option 'url' is not a URL" },
      { "url http", "http://localhost/", "option 'url' has an unsupported scheme 'http'" },
      { "url TLS key without rediss", "redis://h:6380/0?ca_file=/x", "option 'url' has 'ca_file', a TLS setting: use rediss://" },
      { "tls unknown key", { tls = { ca = "/x" } }, "option 'tls' has an unknown key 'ca'" },
      { "tls cert without key", { tls = { cert_file = "/etc/hostname" } }, "option 'tls.cert_file' needs 'key_file'" },
      { "url port not a number", "redis://h:port/0", "option 'url' has a malformed host or port" },
      { "url port out of range", "redis://h:70000/0", "option 'port' must be from 1 to 65535" },
      { "url port zero", "redis://h:0/0", "option 'port' must be from 1 to 65535" },
      { "url db not a number", "redis://h:6379/x", "option 'url' has a db that is not a number" },
      { "url db negative", "redis://h:6379/-1", "option 'url' has a db that is not a number" },
      { "url relative unix path", "unix://redis.sock", "option 'url' needs an absolute socket path" },
      { "url unix db not a number", "unix:///tmp/r.sock?db=x", "option 'url' has a db that is not a number" },
      { "url unix unknown parameter", "unix:///tmp/r.sock?timeout=1", "option 'url' has an unknown query parameter 'timeout'" },
      { "host number", { host = 1 }, "option 'host' must be a string, got number" },
      { "host empty", { host = "" }, "option 'host' must not be empty" },
      { "host NUL", { host = "a\0b" }, "option 'host' must not contain a NUL byte" },
      { "port string", { port = "6379" }, "option 'port' must be an integer, got string" },
      { "port fraction", { port = 63.5 }, "option 'port' must be an integer, got 63.5" },
      { "port NaN", { port = NAN }, "option 'port' must be an integer, got " .. tostring(NAN) },
      { "port inf", { port = INF }, "option 'port' must be an integer, got inf" },
      { "port zero", { port = 0 }, "option 'port' must be from 1 to 65535" },
      { "port negative", { port = -1 }, "option 'port' must be from 1 to 65535" },
      { "port too big", { port = 65536 }, "option 'port' must be from 1 to 65535" },
      { "path empty", { path = "" }, "option 'path' must not be empty" },
      { "path NUL", { path = "/tmp/a\0b" }, "option 'path' must not contain a NUL byte" },
      { "db negative", { db = -1 }, "option 'db' must not be negative" },
      { "db fraction", { db = 1.5 }, "option 'db' must be an integer, got 1.5" },
      { "db string", { db = "1" }, "option 'db' must be an integer, got string" },
      { "username without password", { username = "u" }, "option 'username' needs a password" },
      { "username empty", { username = "", password = "p" }, "option 'username' must not be empty" },
      { "password number", { password = 1234 }, "option 'password' must be a string, got number" },
      { "prefix table", { prefix = {} }, "option 'prefix' must be a string, got table" },
      { "prefix half hash tag", { prefix = "a{b:" }, "option 'prefix' has a '{' that does not open a hash tag" },
      { "retry_max below retry_step", { retry_step = 0.2, retry_max = 0.1 }, "option 'retry_max' must not be below retry_step" },
    }
    for _, opt in ipairs { "connect_timeout", "timeout", "retry_step", "retry_max" } do
      for _, bad in ipairs {
        { "string", "1", "must be a number of seconds, got string" },
        { "NaN", NAN, "must not be NaN" },
        { "+inf", INF, "must not exceed 1e9 seconds" },
        { "-inf", -INF, "must be at least 0.001 seconds" },
        { "negative", -1, "must be at least 0.001 seconds" },
        { "zero", 0, "must be at least 0.001 seconds" },
        { "below 1 ms", 0.0005, "must be at least 0.001 seconds" },
        { "above 1e9 s", 1e9 + 1, "must not exceed 1e9 seconds" },
      } do
        rows[#rows + 1] = { opt .. " " .. bad[1], { [opt] = bad[2] }, ("option '%s' %s"):format(opt, bad[3]) }
      end
    end
    for _, row in ipairs(rows) do
      it("raises for " .. row[1], function()
        local msg = conf_error(row[2])
        assert.equal("fluxalock.configure: pool 'p': " .. row[3],
          msg:sub(1, #("fluxalock.configure: pool 'p': " .. row[3])))
      end)
    end

    it("raises for a configuration of the wrong shape", function()
      assert.equal("fluxalock.configure: configuration must be a table, got nil", raised(function() fl.configure() end))
      assert.matches("unknown configuration key 'pool'", raised(function() fl.configure { pool = {} } end))
      assert.matches("'pools' must be a table, got string", raised(function() fl.configure { pools = "x" } end))
      assert.matches("pool names must be non%-empty strings", raised(function() fl.configure { pools = { [""] = "redis://h" } } end))
      assert.matches("pool 'p': must be a URL string or a table, got number", raised(function() fl.configure { pools = { p = 5 } } end))
    end)

    it("raises in locker() for a wrong pool argument, naming it", function()
      assert.equal("bad argument #1 to 'locker' (unknown pool 'nope')", raised(function() return fl.locker("nope") end))
      assert.matches("^bad argument #1 to 'locker' %(pool name, URL or options table expected, got number%)",
        raised(function() return fl.locker(5) end))
      assert.matches("^bad argument #1 to 'locker' %(.*has a malformed host or port",
        raised(function() return fl.locker("redis://h:x/") end))
      assert.matches("^bad argument #1 to 'locker' %(.*is not a known option",
        raised(function() return fl.locker { url = server.url, colour = "red" } end))
    end)
  end)

  describe("that only Redis can refuse", function()
    it("returns nil, 'fluxalock: select ...' for a db number the server does not have", function()
      local l = fl.locker { url = server.url, db = 99 }
      local lock, err = l:obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: select 127%.0%.0%.1:%d+: db 99: ERR DB index is out of range$", err)
    end)

    it("returns nil, 'fluxalock: auth ...' for a wrong password, a password not needed, a wrong user", function()
      local s = R.start { args = { "--requirepass", "right-pw" }, password = "right-pw" }
      finally(function() s:stop() end)
      local l = fl.locker { url = s.url, password = "wrong-pw" }
      local lock, err = l:obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", err)
      assert.is_nil(err:find("wrong-pw", 1, true))
      lock, err = fl.locker(s.url):obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: obtain 127%.0%.0%.1:%d+: NOAUTH", err)
      lock, err = fl.locker { url = s.url, username = "nobody", password = "right-pw" }:obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", err)
      -- a password given to a server that has none: Redis 7 refuses the AUTH
      lock, err = fl.locker { url = server.url, password = "x" }:obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: ERR", err)
      lock = assert(fl.locker { url = s.url, password = "right-pw" }:obtain("k", 5))
      assert.is_true(lock:release())
    end)

    it("returns nil, 'fluxalock: connect ...' for a port nobody listens on, a missing socket", function()
      local socket = require "socket"
      local probe = assert(socket.bind("127.0.0.1", 0))
      local port = tonumber((select(2, probe:getsockname())))
      probe:close()
      local lock, err = fl.locker { host = "127.0.0.1", port = port }:obtain("k", 5)
      assert.is_nil(lock)
      assert.equal(("fluxalock: connect 127.0.0.1:%d: Connection refused"):format(port), err)
      lock, err = fl.locker("unix:///nonexistent/redis.sock"):obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: connect unix:/nonexistent/redis%.sock: ", err)
    end)

    it("returns nil, 'fluxalock: connect ...' for a host name that does not resolve", function()
      local lock, err = fl.locker { host = "no-such-host.invalid", connect_timeout = 2 }:obtain("k", 5)
      assert.is_nil(lock)
      assert.matches("^fluxalock: connect no%-such%-host%.invalid:6379: ", err)
    end)
  end)
end)
