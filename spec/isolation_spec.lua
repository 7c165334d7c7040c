-- Where a pool's locks live, checked in Redis itself: its db, its prefix,
-- its Unix socket; and who may use it: AUTH with a password, ACL users.
local R = require "support.redis"

describe("isolation", function()
  local server, fluxalock
  R.setup({ locker = false }, function(e) server, fluxalock = e.server, e.fluxalock end)

  local function db_url(n) return ("redis://127.0.0.1:%d/%d"):format(server.port, n) end

  it("by db: a pool's locks are in its db only, and other dbs do not exclude them", function()
    local l0 = fluxalock.locker(db_url(0))
    local l2 = fluxalock.locker(db_url(2))
    local a = assert(l2:obtain("db-key", 30))
    assert.equal(a:token(), server:cli("-n", "2", "GET", "db-key"))
    assert.equal("0", server:cli("-n", "0", "EXISTS", "db-key"))
    -- the fence counter and wake-up list stay in db 2 too
    assert.equal("0", server:cli("-n", "0", "EXISTS", "fluxalock:fence"))
    local b = assert(l0:obtain("db-key", 30), "db 0 must not see db 2's lock")
    assert.equal(b:token(), server:cli("-n", "0", "GET", "db-key"))
    assert.same({ nil, "not obtained", "not_obtained" }, { l2:obtain("db-key", 30) })
    assert.is_true(a:release())
    assert.equal("0", server:cli("-n", "2", "EXISTS", "db-key"))
    assert.equal("1", server:cli("-n", "0", "EXISTS", "db-key"))
    assert.is_true(b:release())
  end)

  it("by db, configured as a table key overriding the URL", function()
    fluxalock.configure { pools = { five = { url = db_url(1), db = 5 } } }
    local lock = assert(fluxalock.locker("five"):obtain("db5", 30))
    assert.equal(lock:token(), server:cli("-n", "5", "GET", "db5"))
    assert.equal("0", server:cli("-n", "1", "EXISTS", "db5"))
    lock:release()
  end)

  it("by prefix: keys are <prefix><key> in Redis, and prefixes do not exclude each other", function()
    server:cli("DEL", "fluxalock:fence") -- left by unprefixed lockers before
    local pa = fluxalock.locker { url = server.url, prefix = "app-a:" }
    local pb = fluxalock.locker { url = server.url, prefix = "app-b:" }
    local a = assert(pa:obtain("job", 30))
    local b = assert(pb:obtain("job", 30), "another prefix is another lock")
    assert.equal(a:token(), server:cli("GET", "app-a:job"))
    assert.equal(b:token(), server:cli("GET", "app-b:job"))
    assert.equal("0", server:cli("EXISTS", "job"))
    -- companion keys (fence counter) carry the prefix too
    assert.equal(tostring(a:fence()), server:cli("GET", "app-a:fluxalock:fence"))
    assert.equal("0", server:cli("EXISTS", "fluxalock:fence"))
    -- the same prefix does exclude, whichever locker asks
    local pa2 = fluxalock.locker { url = server.url, prefix = "app-a:" }
    assert.same({ nil, "not obtained", "not_obtained" }, { pa2:obtain("job", 30) })
    -- an unprefixed locker sees another key altogether
    local plain = fluxalock.locker(server.url)
    local c = assert(plain:obtain("job", 30))
    assert.is_true(a:release())
    assert.equal("0", server:cli("EXISTS", "app-a:job"))
    assert.equal(b:token(), server:cli("GET", "app-b:job"))
    assert.is_true(b:release())
    assert.is_true(c:release())
  end)

  it("by prefix with a hash tag, as configured", function()
    fluxalock.configure { pools = { tagged = { url = server.url, prefix = "{jobs}:" } } }
    local lock = assert(fluxalock.locker("tagged"):obtain("nightly", 30))
    assert.equal(lock:token(), server:cli("GET", "{jobs}:nightly"))
    assert.equal("nightly", lock:key())
    lock:release()
  end)

  it("by a default prefix, which an invalid configure leaves unchanged", function()
    fluxalock.configure { defaults = { prefix = "dflt:" } }
    finally(function() fluxalock.configure { defaults = {} } end)
    local ok = pcall(fluxalock.configure, { defaults = { prefix = "other:" }, pools = { bad = { port = "x" } } })
    assert.is_false(ok)
    local lock = assert(fluxalock.locker { url = server.url }:obtain("dk", 30))
    assert.equal(lock:token(), server:cli("GET", "dflt:dk"))
    assert.equal("0", server:cli("EXISTS", "other:dk"))
    lock:release()
  end)

  it("over the Unix socket: the same server, the same locks", function()
    local unix = fluxalock.locker(server.unix_url)
    local tcp = fluxalock.locker(server.url)
    assert.equal("fluxalock.Locker: unix:" .. server.socket .. " (unix:" .. server.socket .. ")", tostring(unix))
    local lock = assert(unix:obtain("sock-key", 30))
    assert.equal(lock:token(), server:cli("GET", "sock-key"))
    assert.same({ nil, "not obtained", "not_obtained" }, { tcp:obtain("sock-key", 30) })
    assert.is_true(lock:refresh(1))
    assert.is_true(lock:release())
    -- a socket URL with ?db=N
    local l3 = fluxalock.locker(server.unix_url .. "?db=3")
    local d = assert(l3:obtain("sock-db", 30))
    assert.equal(d:token(), server:cli("-n", "3", "GET", "sock-db"))
    assert.equal("0", server:cli("-n", "0", "EXISTS", "sock-db"))
    assert.is_true(d:release())
    -- and as a table with path
    local t = fluxalock.locker { path = server.socket, db = 4 }
    local e = assert(t:obtain("sock-table", 30))
    assert.equal(e:token(), server:cli("-n", "4", "GET", "sock-table"))
    assert.is_true(e:release())
  end)

  it("a db the server does not have fails with nil, 'fluxalock: select ...'", function()
    local l = fluxalock.locker(db_url(99))
    local lock, err = l:obtain("k", 5)
    assert.is_nil(lock)
    assert.matches("^fluxalock: select 127%.0%.0%.1:%d+: db 99: ERR", err)
  end)
end)

describe("authentication", function()
  local PASSWORD = "s3cret-Pa55"
  local server, fluxalock

  lazy_setup(function()
    server = R.start { args = { "--requirepass", PASSWORD }, password = PASSWORD }
    fluxalock = require "fluxalock"
  end)
  lazy_teardown(function() if server then server:stop() end end)

  local function url(userinfo, path)
    return ("redis://%s@127.0.0.1:%d%s"):format(userinfo, server.port, path or "/0")
  end

  it("with the right password (every URL form and a table) works", function()
    for _, l in ipairs {
      fluxalock.locker(url(":" .. PASSWORD)),
      fluxalock.locker(url(PASSWORD)), -- the old form
      fluxalock.locker(url("default:" .. PASSWORD)),
      fluxalock.locker { port = server.port, password = PASSWORD },
      fluxalock.locker { path = server.socket, password = PASSWORD, db = 1 },
    } do
      local lock = assert(l:obtain("auth-ok", 30))
      assert.is_true(lock:release())
    end
  end)

  it("with a wrong password returns nil, 'fluxalock: auth ...: WRONGPASS ...' without the password", function()
    local l = fluxalock.locker(url(":not-the-" .. PASSWORD))
    local lock, err = l:obtain("auth-bad", 30)
    assert.is_nil(lock)
    assert.matches("^fluxalock: auth 127%.0%.0%.1:" .. server.port .. ": WRONGPASS", err)
    assert.not_matches(PASSWORD, err, 1, true)
    assert.not_matches("not-the-", err, 1, true)
    assert.not_matches(PASSWORD, tostring(l), 1, true)
    -- and it keeps failing cleanly (each call reconnects and is refused)
    local again, err2 = l:obtain("auth-bad", 30)
    assert.is_nil(again)
    assert.equal(err, err2)
    assert.equal("0", server:cli("EXISTS", "auth-bad"))
  end)

  it("without a password returns nil, 'fluxalock: obtain ...: NOAUTH ...'", function()
    local l = fluxalock.locker(("redis://127.0.0.1:%d/0"):format(server.port))
    local lock, err = l:obtain("auth-none", 30)
    assert.is_nil(lock)
    assert.matches("^fluxalock: obtain 127%.0%.0%.1:%d+: NOAUTH", err)
  end)

  it("with an ACL user works, and a wrong password for it fails without showing it", function()
    assert.equal("OK", server:cli("ACL", "SETUSER", "locker", "on", ">u-pass-1", "~*", "+@all"))
    local l = fluxalock.locker(url("locker:u-pass-1"))
    local lock = assert(l:obtain("acl-key", 30))
    assert.equal(lock:token(), server:cli("GET", "acl-key"))
    assert.is_true(lock:release())
    local bad = fluxalock.locker(url("locker:" .. PASSWORD)) -- the default user's password
    local no, err = bad:obtain("acl-key", 30)
    assert.is_nil(no)
    assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", err)
    assert.not_matches(PASSWORD, err, 1, true)
    assert.not_matches("u-pass-1", err, 1, true)
  end)

  it("with an ACL user allowed only its prefix's keys (every key fluxalock touches is prefixed)", function()
    assert.equal("OK", server:cli("ACL", "SETUSER", "tenant", "on", ">t-pass", "resetkeys", "~tenant:*",
      "+@all", "-@dangerous", "+blpop"))
    local l = fluxalock.locker { port = server.port, username = "tenant", password = "t-pass", prefix = "tenant:" }
    local lock = assert(l:obtain("job", 30))
    assert.is_true(lock:ttl() > 29)
    assert.is_true(lock:refresh(1))
    -- a waiter: its wake-up list is within the prefix too
    local w = assert(R.spawn(([[
      local fluxalock = require "fluxalock"
      local l = fluxalock.locker { port = %d, username = "tenant", password = "t-pass", prefix = "tenant:" }
      local lock, err = l:obtain("job", 10, 10)
      print(lock and "GOT" or ("FAILED " .. tostring(err)))
      if lock then lock:release() end
    ]]):format(server.port)))
    R.until_true(function() return server:blocked() > 0 end, 10, "a waiter")
    assert.equal(lock:token(), server:cli("GET", "tenant:job")) -- the holder's value untouched
    assert.is_true(lock:release())
    assert.matches("^GOT", w:wait(20))
    -- and outside its prefix it is refused by Redis, as a value
    local outside = fluxalock.locker { port = server.port, username = "tenant", password = "t-pass" }
    local no, err = outside:obtain("job", 30)
    assert.is_nil(no)
    assert.matches("^fluxalock: obtain 127%.0%.0%.1:%d+: .*NOPERM", err)
  end)
end)
