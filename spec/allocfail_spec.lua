-- Allocation failures in the C core (issue 17, items 1 and 11): an
-- allocator that fails one chosen allocation, built here from
-- spec/support/failalloc.c (LD_PRELOAD: malloc/realloc of one C function)
-- and spec/support/failalloc_lua.c (the Lua state's allocator), against
-- real redis-servers.
local R = require "support.redis"

local ROOT = R.sh("pwd"):gsub("%s+$", "")
local q = R.quote

-- build a support C file into a shared object of a private directory
local function build(name, flags)
  local dir = R.tmpdir("failalloc")
  local so = dir .. "/" .. name .. ".so"
  local out = R.sh(("cc -std=c99 -O1 -g -Wall -Wextra -Werror -fPIC -shared %s -o %s %s 2>&1; echo rc=$?")
    :format(flags or "", q(so), q(ROOT .. "/spec/support/" .. name .. ".c")))
  assert(out:match("rc=0\n$"), out)
  return so, dir
end

-- (ASan replaces malloc itself: tools/checks/asan.sh leaves these out)
describe("an allocation failure after part of a request was written (item 1, an LD_PRELOAD allocator)", function()
  local master, preload

  -- a replica, so that each request is an EVALSHA and a WAIT (replicas = 1)
  R.setup_pair(function(e)
    preload = build("failalloc", "-ldl")
    master = e.master
  end)

  -- eight coroutines obtain one key on one link under luv, after SCRIPT
  -- FLUSH: the first one's NOSCRIPT queues its EVAL (and WAIT) and moves it
  -- to the link's tail, where the FIFO must grow: that growth (the 2nd
  -- allocation of fl_link_push: the 1st made the FIFO) fails.  Its EVAL was
  -- already written; if the link stayed open, its "obtained" would be read
  -- by the next coroutine, whose own token is not the one in Redis.
  it("closes the link: no obtain reads another request's reply", function()
    assert.equal("OK", master:cli("SCRIPT", "FLUSH"))
    master:cli("DEL", "one")
    local p = R.spawn(([[
      local uv = require "luv"
      local core = require "fluxalock.core"
      local host = require("fluxalock.host").resolve("luv")
      local pool = core.pool { host = "127.0.0.1", port = %d, replicas = 1, replica_timeout = 2,
                               timeout = 3, max_connections = 1 }
      pool:sethost(host)
      local got, first = {}, nil
      coroutine.wrap(function() first = pool:call { "CLIENT", "ID" } end)()
      uv.run()
      for i = 1, 8 do
        coroutine.wrap(function()
          local lock, err = pool:obtain("one", 30000)
          got[i] = { lock = lock, err = err }
        end)()
      end
      uv.run()
      -- each lock obtained, asked of Redis: is its token the one there?
      coroutine.wrap(function()
        for i = 1, 8 do
          local g = got[i]
          if g.lock then
            print(("%%d obtained ttl=%%s"):format(i, tostring(g.lock:ttl())))
          else
            print(("%%d failed %%s"):format(i, tostring(g.err)))
          end
        end
        -- the pool goes on, on a fresh link
        local lock, err = pool:obtain("two", 30000)
        print("after " .. (lock and "obtained" or tostring(err)))
        local now = pool:call { "CLIENT", "ID" }
        local list = pool:call { "CLIENT", "LIST" }
        print(("first link %%s: %%s"):format(now ~= first and "replaced" or "still used",
          list:find("id=" .. first .. " ", 1, true) and "still open" or "closed"))
      end)()
      uv.run()
    ]]):format(master.port), { LD_PRELOAD = preload, FAILALLOC_FUNC = "fl_link_push", FAILALLOC_NTH = "2" })
    local out = p:wait(30)
    assert.matches("failalloc: failed malloc%(%d+%) #2 in fl_link_push", out) -- the injection happened
    assert.matches("\n?1 failed fluxalock: obtain 127%.0%.0%.1:%d+: out of memory\n", out)
    -- every lock returned is the one Redis holds (ttl from Redis, by token)
    for i, ttl in out:gmatch("(%d) obtained ttl=(%S+)") do
      assert.is_true(tonumber(ttl) ~= nil and tonumber(ttl) > 0,
        "coroutine " .. i .. " was told it obtained, Redis says ttl " .. ttl .. "\n" .. out)
    end
    local holders = select(2, out:gsub("%d obtained", ""))
    assert.is_true(holders <= 1, out)
    assert.matches("\nafter obtained\n", out)
    assert.matches("\nfirst link replaced: closed\n", out)
  end)

  -- a plain script: the obtain's EVALSHA and WAIT fit the link's buffer
  -- (its 1st allocation); after SCRIPT FLUSH the NOSCRIPT retry's EVAL,
  -- longer by the script's body, does not: that growth (the 2nd) fails.
  -- The WAIT's reply of the failed EVALSHA was still to come: left on an
  -- open link, it answered the next obtain
  it("a NOSCRIPT retry that cannot be queued closes the link: the next obtain reads its own replies", function()
    assert.equal("OK", master:cli("SCRIPT", "FLUSH"))
    local key = string.rep("r", 120) -- sized for the buffer's steps (256, 512, 1024)
    local p = R.spawn(([[
      local core = require "fluxalock.core"
      local pool = core.pool { host = "127.0.0.1", port = %d, replicas = 1, replica_timeout = 2 }
      print("first " .. tostring(select(2, pool:obtain(%q .. "1", 30000))))
      local lock, err = pool:obtain(%q .. "2", 30000)
      print("second " .. (lock and "obtained ttl=" .. tostring(lock:ttl()) or tostring(err)))
    ]]):format(master.port, key, key), { LD_PRELOAD = preload, FAILALLOC_FUNC = "fl_link_out", FAILALLOC_NTH = "2" })
    local out = p:wait(30)
    assert.matches("failalloc: failed realloc%(1024%) #2 in fl_link_out", out) -- the EVAL's growth
    assert.matches("\nfirst fluxalock: obtain 127%.0%.0%.1:%d+: out of memory\n", out)
    local ttl = out:match("\nsecond obtained ttl=(%S+)\n")
    assert.is_true(ttl ~= nil and tonumber(ttl) > 29, out)
    assert.equal("0", master:cli("EXISTS", key .. "1"))
  end)

  -- the handshake's SELECT cannot be queued (the first allocation of
  -- fl_link_out fails): that connection must not carry commands, which
  -- would run in database 0
  it("a connection whose SELECT could not be queued is not used", function()
    master:cli("FLUSHALL")
    local p = R.spawn(([[
      local core = require "fluxalock.core"
      local pool = core.pool { host = "127.0.0.1", port = %d, db = 1 }
      print("first " .. tostring(select(2, pool:obtain("db-key", 30000))))
      print("second " .. (pool:obtain("db-key", 30000) and "obtained" or "failed"))
      os.exit(0) -- the Lua state is not closed: the lock stays, to be looked for
    ]]):format(master.port), { LD_PRELOAD = preload, FAILALLOC_FUNC = "fl_link_out", FAILALLOC_NTH = "1" })
    local out = p:wait(30)
    assert.matches("failalloc: failed realloc%(%d+%) #1 in fl_link_out", out)
    assert.matches("\nfirst fluxalock: connect 127%.0%.0%.1:%d+: out of memory\n", out)
    assert.matches("\nsecond obtained\n", out)
    assert.equal("1", master:cli("-n", "1", "EXISTS", "db-key"))
    assert.equal("0", master:cli("-n", "0", "EXISTS", "db-key"))
  end)
end)

describe("a Lua memory error in the C core while it owns memory (item 11, the Lua state's allocator)", function()
  local server, mod_dir, gone

  lazy_setup(function()
    local _, dir = build("failalloc_lua", "-I/usr/include/lua5.4")
    mod_dir = dir
    server = R.start()
    gone = R.free_port() -- a port nobody listens on: every connect is refused
  end)

  lazy_teardown(function() if server then server:stop() end end)

  -- run Lua code in a lua5.4 process with the module on its path; under
  -- valgrind (definitely lost, and memcheck's errors, fail it with 33)
  -- unless a sanitizer run already wraps lua5.4 (it judges leaks itself)
  local function run(code, valgrind)
    local file = mod_dir .. "/main.lua"
    local f = assert(io.open(file, "w"))
    f:write(code)
    f:close()
    local wrapped = os.getenv("ASAN_OPTIONS") or (os.getenv("LD_PRELOAD") or ""):find("vgpreload")
    local vg = valgrind and not wrapped and
      "valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --error-exitcode=33 " or ""
    local out = R.sh(("cd %s && LUA_PATH=%s LUA_CPATH=%s %slua5.4 %s 2>&1; echo rc=$?"):format(
      q(ROOT), q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"),
      q(ROOT .. "/?.so;" .. mod_dir .. "/?.so;;"), vg, q(file)))
    return out, tonumber(out:match("rc=(%d+)\n$"))
  end

  it("wake.c: a channel that could not be handed over is kept and delivered later, nothing leaks", function()
    local out, rc = run(([[
      local fa = require "failalloc_lua"
      local core = require "fluxalock.core"
      local pool = core.pool { host = "127.0.0.1", port = %d }
      local other = core.pool { host = "127.0.0.1", port = %d }
      local function nap(secs) core.sleep(math.min(secs, 0.01)) end
      pool:sethost { wait = function(_, _, secs) nap(secs) end, park = function(_, secs) nap(secs) end,
                     unpark = function() end }
      local key = string.rep("k", 60) -- a long channel name: a new Lua string each time
      local ch = pool:watch(key)
      local waiter, got, armed = {}, {}, false
      core.setnotify(function(c)
        got[#got + 1] = c
        if not armed then -- the next allocation fails: the second channel's string
          armed = true
          fa.arm(1)
        end
      end)
      repeat pool:subwait(waiter, 0.01) until (other:call { "PUBSUB", "NUMSUB", ch })[2] == 1
      -- four messages in one write of the server's
      other:call { "EVAL", "for i = 1, 4 do redis.call('PUBLISH', KEYS[1], 'm' .. i) end", "1", ch }
      local ok, err
      repeat ok, err = pcall(pool.subwait, pool, waiter, 0.01) until #got > 0 or not ok
      print("first", ok, err, fa.disarm(), #got)
      for _ = 1, 200 do
        if #got >= 4 then break end
        pool:subwait(waiter, 0.01)
      end
      print("delivered", #got)
      core.setnotify(nil)
    ]]):format(server.port, server.port), true)
    assert.matches("first\tfalse\tnot enough memory\ttrue\t1\n", out)
    assert.matches("delivered\t4\n", out)
    assert.equal(0, rc, out)
  end)

  it("a verdict that raises gives its requests back: in_flight is 0 after every failed allocation", function()
    local out, rc = run(([[
      local fa = require "failalloc_lua"
      local core = require "fluxalock.core"
      local pool = core.pool { host = "127.0.0.1", port = %d, timeout = 1, connect_timeout = 1 }
      local stuck, raised, n, fired = {}, 0, 0, nil
      local function obtain(nth) -- armed inside the pcall: every allocation after is in it
        fa.arm(nth)
        return pool:obtain("k", 1000)
      end
      repeat -- the n-th allocation of an obtain fails, for n = 1, 2, ... until none does
        n = n + 1
        local ok, _, err = pcall(obtain, n)
        fired = fa.disarm()
        if not ok then raised = raised + 1 end
        if fired and ok and not tostring(err):match("^fluxalock: connect ") then print("odd", err) end
        local flying = pool:counts().in_flight
        if flying ~= 0 then stuck[#stuck + 1] = n .. ":" .. flying end
      until not fired or n > 200
      print(("sweep n=%%d raised=%%d stuck=%%s"):format(n, raised, table.concat(stuck, ",")))
    ]]):format(gone), false)
    assert.equal(0, rc, out)
    local n, raised, stuck = out:match("sweep n=(%d+) raised=(%d+) stuck=(%S*)\n")
    assert.is_truthy(n, out)
    assert.is_true(tonumber(raised) >= 2, out) -- memory errors happened, the verdict's among them
    assert.equal("", stuck, out)
    assert.is_nil(out:match("odd"), out)
  end)
end)
