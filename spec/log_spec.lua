-- The debug log: configure{log = fn}, the pool option 'log', and
-- FLUXALOCK_DEBUG=1; one event per Redis request, never a token or a
-- password in it.  (The pool kinds and the hosts: spec/stats_spec.lua.)
local R = require "support.redis"

local fluxalock = require "fluxalock"

local function recorder()
  local events = {}
  return events, function(e) events[#events + 1] = e end
end

-- every string in every field of every event
local function strings(events)
  local t = {}
  for _, e in ipairs(events) do
    for k, v in pairs(e) do t[#t + 1] = tostring(k) .. "=" .. tostring(v) end
  end
  return t
end

describe("the debug log", function()
  local server

  R.setup({ module = false, teardown = function()
    fluxalock.configure { log = false, pools = { log_a = false, log_b = false } }
  end }, function(e) server = e.server end)

  after_each(function() fluxalock.configure { log = false } end)

  it("gives one event per request with pool, op, key (no prefix), seconds, ok, outcome", function()
    local events, log = recorder()
    fluxalock.configure { pools = { log_a = { url = server.url, prefix = "app:" } }, log = log }
    local l = fluxalock.locker("log_a")
    local lock = assert(l:obtain("job", 5))
    assert.is_nil(l:obtain("job", 5, 0.05)) -- obtain, then waits and obtains again
    assert(lock:ttl())
    assert(lock:refresh(1))
    assert.is_true(lock:release())
    local where = ("127.0.0.1:%d"):format(server.port)
    local first = events[1]
    assert.same({ pool = "log_a", op = "obtain", key = "job", ok = true, outcome = "obtained",
      where = where, seconds = first.seconds }, first)
    assert.is_true(first.seconds > 0 and first.seconds < 1, tostring(first.seconds))
    local seen = {}
    for _, e in ipairs(events) do
      assert.equal("log_a", e.pool)
      assert.equal("job", e.key)
      assert.is_true(e.ok)
      seen[e.op .. ":" .. e.outcome] = true
    end
    for _, k in ipairs { "obtain:obtained", "obtain:not obtained", "wait:timed out", "ttl:held",
                         "refresh:refreshed", "release:released" } do
      assert.is_true(seen[k], k)
    end
    assert.equal("release", events[#events].op)
  end)

  it("reports a failure with ok = false, the message and the code obtain returned", function()
    local events, log = recorder()
    local _, url = R.free_port()
    local l = fluxalock.locker { url = url, connect_timeout = 0.5, log = log }
    local _, err, code = l:obtain("gone", 5)
    assert.equal(1, #events)
    assert.is_false(events[1].ok)
    assert.equal(err, events[1].error)
    assert.equal("connect", code)
    assert.equal(code, events[1].code)
    assert.is_nil(events[1].outcome)
  end)

  it("gives a not-obtained obtain the code 'not_obtained', a success none", function()
    local events, log = recorder()
    local l = fluxalock.locker { url = server.url, log = log }
    local lock = assert(l:obtain("coded", 5))
    assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain("coded", 5) })
    assert.is_true(lock:release())
    assert.same({ "obtain", true, nil }, { events[1].op, events[1].ok, events[1].code })
    assert.same({ "obtain", true, "not obtained", "not_obtained" },
      { events[2].op, events[2].ok, events[2].outcome, events[2].code })
    assert.same({ "release", nil }, { events[3].op, events[3].code })
  end)

  it("never holds a token or a password, also when auth fails", function()
    local secret = "s3cret-pass-" .. math.random(1e9)
    local guarded = R.start { args = { "--requirepass", secret }, password = secret }
    local events, log = recorder()
    fluxalock.configure { log = log }
    local tokens = {}
    local ok_pool = fluxalock.locker(("redis://:%s@127.0.0.1:%d/0"):format(secret, guarded.port))
    local bad_pool = fluxalock.locker { host = "127.0.0.1", port = guarded.port, password = secret .. "x" }
    local lock = assert(ok_pool:obtain("k", 5))
    tokens[#tokens + 1] = lock:token()
    assert(lock:ttl())
    assert(lock:refresh(1))
    assert.is_true(lock:release())
    local other = assert(ok_pool:obtain("k", 5))
    tokens[#tokens + 1] = other:token()
    assert.is_nil(bad_pool:obtain("k", 5))
    guarded:stop()
    assert.is_nil(other:release()) -- a failure, with its message
    assert.is_true(#events >= 7)
    local failed = 0
    for _, e in ipairs(events) do if not e.ok then failed = failed + 1 end end
    assert.equal(2, failed)
    for _, s in ipairs(strings(events)) do
      assert.is_nil(s:find(secret, 1, true), s)
      for _, t in ipairs(tokens) do assert.is_nil(s:find(t, 1, true), s) end
    end
  end)

  it("stops with log = false, and a pool's own option wins over configure's", function()
    local events, log = recorder()
    local mine, pool_log = recorder()
    fluxalock.configure { log = log, pools = {
      log_a = server.url,
      log_b = { url = server.url, log = false },
    } }
    assert(fluxalock.locker("log_a"):obtain("a", 1)):release()
    assert(fluxalock.locker("log_b"):obtain("b", 1)):release()
    assert.equal(2, #events)
    assert.equal("log_a", events[1].pool)
    -- the option changes the existing locker in place (its counters stay)
    local b = fluxalock.locker("log_b")
    fluxalock.configure { pools = { log_b = { url = server.url, log = pool_log } } }
    assert.equal(b, fluxalock.locker("log_b"))
    assert(b:obtain("b", 1)):release()
    assert.equal(2, #mine)
    assert.equal(2, #events)
    fluxalock.configure { log = false }
    assert(fluxalock.locker("log_a"):obtain("a", 1)):release()
    assert.equal(2, #events)
    assert.equal(2, b:stats().obtained)
  end)

  it("names the command of a call, never its arguments", function()
    local events, log = recorder()
    local p = require("fluxalock.core").pool { host = "127.0.0.1", port = server.port }
    p:setlog(log)
    assert.is_nil(p:call { "AUTH", "not-the-password" })
    assert.equal("PONG", p:call { "PING" })
    assert.equal("AUTH", events[1].command)
    assert.is_false(events[1].ok)
    for _, s in ipairs(strings(events)) do assert.is_nil(s:find("not-the-password", 1, true), s) end
    assert.same({ "call", "PING", true, "reply" }, { events[2].op, events[2].command, events[2].ok, events[2].outcome })
  end)

  it("a log function that raises does not break the request; it is reported once on stderr", function()
    local child = R.child([[
      fluxalock.configure { log = function() error("boom in log") end }
      local l = fluxalock.locker()
      for _ = 1, 3 do
        local lock = assert(l:obtain("raise", 5))
        print(lock:release())
      end
      print(l:stats().obtained)
    ]], { URL = server.url })
    local out = child:wait()
    assert.equal(3, select(2, out:gsub("true\n", "")), out)
    assert.matches("\n3\n$", out)
    local _, reports = out:gsub("fluxalock: the log function raised an error %(reported once%): [^\n]*boom in log", "")
    assert.equal(1, reports, out)
  end)

  it("FLUXALOCK_DEBUG=1 writes one line per request to stderr", function()
    local child = R.child([[
      local lock = assert(locker:obtain("cron\njob", 5))
      assert(lock:release())
      io.stdout:write("done\n")
    ]], { URL = server.url, FLUXALOCK_DEBUG = "1" })
    local out = child:wait()
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local where = ("127.0.0.1:%d"):format(server.port)
    assert.equal(3, #lines, out)
    assert.matches('^fluxalock: default obtain "cron\\x0ajob" %d+%.%d%d%d ms %-> obtained %(' .. where .. '%)$', lines[1])
    assert.matches('^fluxalock: default release "cron\\x0ajob" %d+%.%d%d%d ms %-> released %(' .. where .. '%)$', lines[2])
    assert.equal("done", lines[3])
  end)

  it("FLUXALOCK_DEBUG=1 shows a failure's message", function()
    local _, url = R.free_port()
    local child = R.spawn(([[
      local fluxalock = require "fluxalock"
      print(fluxalock.locker(%q):obtain("job", 5))
    ]]):format(url), { FLUXALOCK_DEBUG = "1" })
    local out = child:wait()
    assert.matches('fluxalock: 127%.0%.0%.1:%d+ obtain "job" %d+%.%d+ ms %-> failed %[connect%]: connect 127%.0%.0%.1:%d+: Connection refused\n', out)
  end)

  it("misuse: 'log' must be a function or false", function()
    assert.has_error(function() fluxalock.configure { log = 5 } end,
      "fluxalock.configure: 'log' must be a function or false, got number")
    assert.has_error(function() fluxalock.configure { pools = { log_c = { url = server.url, log = "x" } } } end,
      "fluxalock.configure: pool 'log_c': option 'log' must be a function or false, got string")
    assert.has_error(function() fluxalock.configure { defaults = { log = print } } end,
      "fluxalock.configure: pool 'defaults': option 'log' is set for every pool by configure{ log = ... }")
    assert.has_error(function() fluxalock.locker { url = server.url, log = true } end,
      "bad argument #1 to 'locker' (pool '(table)': option 'log' must be a function or false, got boolean)")
  end)
end)
