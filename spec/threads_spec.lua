-- An embedding program with a Lua state per OS thread (spec/support/
-- lua_threads.c, built here with cc and pkg-config's flags): the process-
-- wide parts of the core (the token pool, the scripts' tables, the wake-up
-- id) shared by two states at once, and a program that goes on after
-- lua_close unloaded the module while a name lookup of it still ran.
-- docs/reliability.md lists these as issue 17's items 2 and 5.
local R = require "support.redis"
local T = require "support.tls"

local ROOT = R.sh("pwd"):gsub("%s+$", "")
local q = R.quote

local function sh_ok(cmd)
  local out, ok = R.sh(cmd .. " 2>&1")
  assert(ok, cmd .. "\n" .. out)
  return out
end

-- cc with Lua's flags from pkg-config; extra flags (a sanitizer) for both
-- the host and, when 'core' is given, a private build of the core module
local function build(dir, extra, core)
  local lua = sh_ok("pkg-config --cflags --libs lua5.4"):gsub("%s+$", "")
  sh_ok(("cc -std=c99 -O1 -g %s -o %s %s %s -lpthread"):format(extra, q(dir .. "/lua_threads"),
    q(ROOT .. "/spec/support/lua_threads.c"), lua))
  if core then
    local src = {}
    for f in sh_ok("ls " .. q(ROOT) .. "/csrc/*.c"):gmatch("[^\n]+") do
      if not f:match("/proc%.c$") then src[#src + 1] = q(f) end
    end
    sh_ok("mkdir -p " .. q(dir .. "/fluxalock"))
    sh_ok(("cc -std=c99 -O1 -g %s -fPIC -shared %s -o %s %s -lhiredis -lssl -lcrypto")
      :format(extra, sh_ok("pkg-config --cflags lua5.4"):gsub("%s+$", ""), q(dir .. "/fluxalock/core.so"),
        table.concat(src, " ")))
  end
end

local write = R.write

describe("an embedding program with a Lua state per thread", function()
  local server, dir

  R.setup({ module = false, teardown = function()
    if dir and dir:match("^/tmp/fluxalock%-threads%.") then R.sh("rm -rf " .. q(dir)) end
  end }, function(e)
    server = e.server
    dir = R.tmpdir("threads")
  end)

  -- item 5: two states on two threads draw tokens at once
  it("never gives two locks the same token, and has no data race (ThreadSanitizer build)", function()
    local tsan = dir .. "/tsan"
    sh_ok("mkdir -p " .. q(tsan))
    build(tsan, "-fsanitize=thread", true)
    write(dir .. "/tokens.lua", ([[
      local fl = require "fluxalock"
      local locker = fl.locker { url = %q }
      local out = {}
      for i = 1, 1500 do
        local lock = assert(locker:obtain(("tok:%%d:%%d"):format(THREAD, i), 30))
        out[i] = lock:token()
        assert(lock:release())
      end
      return table.concat(out, "\n")
    ]]):format(server.url))
    -- lua_close's dlclose frees in the loader, which TSan does not see
    -- synchronised with the thread that loaded the module: not ours
    write(tsan .. "/suppress", "race:_dl_close_worker\n")
    local cmd = ("cd %s && TSAN_OPTIONS=%s LUA_PATH=%s LUA_CPATH=%s "
      .. "timeout 300 %s %s %s 2>%s; echo \"exit=$?\"")
      :format(q(dir), q("halt_on_error=0 exitcode=66 suppressions=" .. tsan .. "/suppress"),
        q(ROOT .. "/lua/?.lua;;"), q(tsan .. "/?.so;;"), q(tsan .. "/lua_threads"),
        q(dir .. "/tokens.lua"), q(dir .. "/tokens.lua"), q(tsan .. "/stderr"))
    local out = R.sh(cmd)
    local f = assert(io.open(tsan .. "/stderr"))
    local err = f:read("a")
    f:close()
    -- the first report, where a race was found
    assert.is_nil(err:find("ThreadSanitizer", 1, true), err:sub(1, 3000))
    assert.matches("exit=0\n$", out, err)
    local seen, n = {}, 0
    for tok in out:gmatch("%f[%x](%x+)%f[^%x]") do
      if #tok == 40 then -- (a token: 40 hex digits)
        assert.is_nil(seen[tok], "a token drawn twice")
        seen[tok], n = true, n + 1
      end
    end
    assert.equal(3000, n)
  end)

  -- item 2: a lookup still running when lua_close unloads the module.  It
  -- needs our own DNS server in a mount namespace, as tls_spec's DNS cases
  -- do: a machine that cannot give a child its own /etc/resolv.conf fails
  -- one case naming what it lacks
  local can, why = T.can_isolate()
  if not can then
    it("test machine: a mount namespace for our own /etc/resolv.conf", function() error(why, 0) end)
    return
  end
  it("survives lua_close while a slow name lookup still runs (the module stays mapped)", function()
    -- a private plain build of the core too: under make check-asan the
    -- tree's own is sanitized, which only a sanitized program can load
    build(dir, "", true)
    local dns = T.dns("answer", 0.5) -- A, then AAAA: answered about 1 s after the ask
    finally(function() dns:stop() end)
    write(dir .. "/slow.lua", [[
      local fl = require "fluxalock"
      local lock, err = fl.locker { url = "redis://slow.fluxalock.test:6379/0", connect_timeout = 0.2 }
        :obtain("named", 5)
      assert(not lock)
      return err
    ]])
    -- the program lives on 3 s after lua_close: the lookup ends meanwhile
    local inner = ("mount --bind %s /etc/resolv.conf && LUA_PATH=%s LUA_CPATH=%s exec %s -l 3 %s")
      :format(q(dns.resolv), q(ROOT .. "/lua/?.lua;;"), q(dir .. "/?.so;;"), q(dir .. "/lua_threads"),
        q(dir .. "/slow.lua"))
    local out = R.sh("timeout 60 unshare --mount sh -c " .. q(inner) .. " 2>&1; echo \"exit=$?\"")
    assert.matches("^fluxalock: connect slow%.fluxalock%.test:6379: timed out", out)
    assert.matches("\nexit=0\n$", out) -- not 139 (SIGSEGV)
  end)
end)
