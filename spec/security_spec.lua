-- Security: no password in any message, tostring or output; the Lua scripts
-- never carry user data (keys and tokens travel as KEYS and ARGV, seen on the
-- wire with MONITOR); AUTH failures are reported clearly; and the whole API
-- works for a Redis ACL user restricted to exactly the minimal ACL of docs/reliability.md,
-- each command of which is needed.
local R = require "support.redis"

local SECRET = "pw-Zq9!s3cr3t"

describe("security", function()
  local server, fl

  setup(function()
    server = R.start { args = { "--requirepass", SECRET }, password = SECRET }
    fl = require "fluxalock"
  end)
  teardown(function() server:stop() end)

  local function no_secret(s, what)
    assert.is_nil(tostring(s):find(SECRET, 1, true), (what or "text") .. " shows the password: " .. tostring(s))
  end

  describe("a password", function()
    it("never appears in errors of configure or locker, nor in tostring", function()
      local enc = SECRET:gsub("!", "%%21")
      for _, bad in ipairs {
        { url = "redis://u:" .. enc .. "@h:99999/0" },
        { url = "redis://:" .. enc .. "@h:1/x" },
        { url = "redis://" .. enc .. "@h:1/x" },
        { password = SECRET, port = "x" },
        { password = SECRET, timeout = 0 },
        { password = SECRET, colour = 1 },
      } do
        local ok, err = pcall(fl.configure, { pools = { p = bad } })
        assert.is_false(ok)
        no_secret(err, "configure")
        ok, err = pcall(fl.locker, bad)
        assert.is_false(ok)
        no_secret(err, "locker")
      end
      local ok, err = pcall(fl.locker, "redis://u:" .. enc .. "@h:x/")
      assert.is_false(ok)
      no_secret(err, "locker(url)")
      local l = fl.locker { url = server.url, password = SECRET }
      no_secret(tostring(l), "tostring(locker)")
      local lock = assert(l:obtain("k", 5))
      no_secret(tostring(lock), "tostring(lock)")
      assert.is_true(lock:release())
      l = fl.locker("redis://:" .. enc .. "@127.0.0.1:" .. server.port .. "/0")
      no_secret(tostring(l), "tostring(locker from a URL)")
    end)

    it("never appears in runtime failures: wrong password, refused, timed out, frozen", function()
      local msgs = {}
      local wrong = SECRET .. "-wrong"
      local function try(l)
        local lock, err = l:obtain("k", 5)
        assert.is_nil(lock)
        msgs[#msgs + 1] = err
        assert.is_nil(err:find(wrong, 1, true))
      end
      try(fl.locker { url = server.url, password = wrong })
      try(fl.locker { url = server.url, username = "someone", password = SECRET })
      try(fl.locker { host = "127.0.0.1", port = 1, password = SECRET })
      server:pause()
      finally(function() server:resume() end)
      try(fl.locker { url = server.url, password = SECRET, timeout = 0.2, connect_timeout = 0.2 })
      server:resume()
      for _, m in ipairs(msgs) do
        assert.matches("^fluxalock: ", m)
        no_secret(m, "error")
      end
      -- and AUTH failures say so clearly
      assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS invalid username%-password pair", msgs[1])
      assert.matches("^fluxalock: auth 127%.0%.0%.1:%d+: WRONGPASS", msgs[2])
    end)

    it("is never printed: a process doing everything, failures included, outputs nothing", function()
      local p = R.spawn([[
        local fl = require "fluxalock"
        fl.configure { pools = { default = { url = os.getenv("URL"), password = os.getenv("PW") },
                                 bad = { url = os.getenv("URL"), password = "x" .. os.getenv("PW") } } }
        local lock = assert(fl.locker():obtain("quiet", 5))
        assert(fl.locker():obtain("quiet", 5, 0.05) == nil)
        lock:ttl() lock:refresh(1)
        local gone = assert(fl.locker():obtain("quiet-gc", 5))
        gone = nil -- luacheck: ignore
        collectgarbage()
        assert(fl.locker("bad"):obtain("k", 1) == nil)
        lock:release()
      ]], { URL = server.url, PW = SECRET })
      local out = p:wait(60)
      assert.equal("", out)
    end)
  end)

  it("sends user data only as KEYS and ARGV, never inside a script (MONITOR)", function()
    local dir = server.dir
    local mon = dir .. "/monitor.txt"
    local pid = tonumber((R.sh(("exec 3>&-; redis-cli -s %s --no-auth-warning -a %s MONITOR > %s 2>&1 & echo $!"):format(
      R.quote(server.socket), R.quote(SECRET), R.quote(mon)))))
    finally(function() os.execute("kill " .. pid .. " 2>/dev/null") end)
    R.until_true(function() return server:cli("CLIENT", "LIST"):find("cmd=monitor", 1, true) end, 10, "MONITOR")
    local KEY = "uSeRkEy'\"]]..\n"
    local l = fl.locker { url = server.url, password = SECRET, prefix = "pfx-MARK:" }
    local a = assert(l:obtain(KEY, 5))
    assert.same({ nil, "not obtained", "not_obtained" }, { l:obtain(KEY, 5, 0.02) })
    assert(a:ttl())
    assert(a:refresh(5))
    server:cli("SCRIPT", "FLUSH") -- the next scripts go as EVAL with their body
    assert(a:ttl())
    assert.is_true(a:release())
    local function drop() assert(l:obtain(KEY, 5)) end
    drop() -- the lock is garbage once drop returns
    collectgarbage() -- __gc: a deferred release, sent as EVAL
    R.until_true(function() return server:cli("EXISTS", "pfx-MARK:" .. KEY) == "0" end, 5, "gc release")
    server:cli("PING") -- the last line MONITOR must show
    R.until_true(function()
      local f = io.open(mon)
      local t = f and f:read("a") or ""
      if f then f:close() end
      return t:find('"PING"', 1, true)
    end, 10, "MONITOR output")
    local f = assert(io.open(mon))
    local text = f:read("a")
    f:close()
    local bodies, shas, evals = {}, {}, 0
    for line in text:gmatch("[^\n]+") do
      local args = {}
      for w in line:gmatch('"(.-[^\\])"') do args[#args + 1] = w end
      local cmd = args[1] and args[1]:upper()
      if cmd == "EVAL" or cmd == "EVALSHA" then
        evals = evals + 1
        local body, nkeys = args[2], tonumber(args[3])
        if cmd == "EVAL" then bodies[body] = true else shas[body] = true end
        assert.is_nil(body:find("MARK", 1, true), "user data inside a script: " .. line)
        assert.is_nil(body:find("uSeRkEy", 1, true), "user data inside a script: " .. line)
        -- the lock key is KEYS[1]
        assert.is_true(nkeys >= 1)
        assert.matches("^pfx%-MARK:", args[4])
      end
    end
    assert.is_true(evals >= 8, "scripts seen: " .. evals)
    local nb, ns = 0, 0
    for _ in pairs(bodies) do nb = nb + 1 end
    for _ in pairs(shas) do ns = ns + 1 end
    assert.is_true(nb >= 1 and nb <= 4, "a fixed set of script bodies")
    assert.is_true(ns >= 1 and ns <= 4, "a fixed set of script hashes")
    no_secret(text:gsub('"AUTH" "' .. SECRET:gsub("%p", "%%%0") .. '"', ""), "MONITOR beyond AUTH")
  end)

  describe("a Redis ACL user restricted to the minimal ACL of docs/reliability.md", function()
    -- that ACL (docs/reliability.md), for prefix "app:"
    local SCRIPT_CMDS = { "get", "set", "del", "incr", "lpush", "pexpire", "pttl" }
    local API_CMDS = { "evalsha", "eval", "blpop", "select", "ping" }

    local function acl(user, without)
      local args = { "ACL", "SETUSER", user, "reset", "on", ">user-pw", "resetkeys", "~app:*",
                     "resetchannels", "-@all" }
      for _, list in ipairs { API_CMDS, SCRIPT_CMDS } do
        for _, c in ipairs(list) do
          if c ~= without then args[#args + 1] = "+" .. c end
        end
      end
      assert.equal("OK", server:cli(table.unpack(args)))
    end

    -- every API path once: a list of what went wrong (empty: all fine)
    local function workout(user, prefix)
      local bad = {}
      server:cli("FLUSHALL")
      local function check(what, ok, v, err)
        if not ok then bad[#bad + 1] = what .. ": " .. tostring(err) end
        return v
      end
      local l = fl.locker { url = server.url, username = user, password = "user-pw", db = 1,
                            prefix = prefix or "app:" }
      local a, err = l:obtain("job", 5)                             -- evalsha: set incr
      if not a then return { "obtain: " .. tostring(err) } end
      local r, e2 = l:obtain("job", 5, 0.03)                        -- set, blpop
      check("wait", r == nil and e2 == "not obtained", r, e2)
      local t, e3 = a:ttl()                                         -- get pttl
      check("ttl", t and t > 0, t, e3)
      local ok, e4 = a:refresh(5)                                   -- get pttl pexpire
      check("refresh", ok == true, ok, e4)
      ok, e4 = a:release()                                          -- get del, del lpush pexpire
      check("release", ok == true, ok, e4)
      check("wake-up", server:cli("-n", "1", "EXISTS", "app:fluxalock:wake:job") == "1", nil, "no wake-up pushed")
      server:cli("SCRIPT", "FLUSH")
      local b, e5 = l:obtain("job2", 5)                             -- eval
      check("obtain after SCRIPT FLUSH", b, nil, e5)
      if b then
        b = nil -- luacheck: ignore
        collectgarbage()                                            -- eval (deferred) + ping
        check("gc release", server:cli("-n", "1", "EXISTS", "app:job2") == "0", nil, "key left")
      end
      return bad
    end

    it("runs the whole API", function()
      acl("fl")
      assert.same({}, workout("fl"))
    end)

    it("is refused keys outside its prefix", function()
      acl("fl")
      local bad = workout("fl", "other:")
      assert.equal(1, #bad)
      assert.matches("^obtain: fluxalock: obtain 127%.0%.0%.1:%d+: .*NOPERM", bad[1])
    end)

    for _, c in ipairs { "evalsha", "eval", "blpop", "select", table.unpack(SCRIPT_CMDS) } do
      it("needs " .. c, function()
        acl("fl-no-" .. c, c)
        local bad = workout("fl-no-" .. c)
        assert.is_true(#bad >= 1, "nothing failed without " .. c)
        -- refused by the ACL: a command of ours (NOPERM), or one that a
        -- script runs ("The user executing the script can't run this command")
        local all = table.concat(bad, "\n")
        assert.is_truthy(all:find("NOPERM", 1, true) or all:find("can't run this command", 1, true),
          "not refused by the ACL: " .. all)
      end)
    end
  end)
end)
