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
  local dir = R.sh("mktemp -d /tmp/fluxalock-failalloc.XXXXXX"):gsub("%s+$", "")
  local so = dir .. "/" .. name .. ".so"
  local out = R.sh(("cc -std=c99 -O1 -g -Wall -Wextra -Werror -fPIC -shared %s -o %s %s 2>&1; echo rc=$?")
    :format(flags or "", q(so), q(ROOT .. "/spec/support/" .. name .. ".c")))
  assert(out:match("rc=0\n$"), out)
  return so, dir
end

describe("an allocation failure after part of a request was written (item 1)", function()
  local master, replica, preload

  lazy_setup(function()
    preload = build("failalloc", "-ldl")
    -- a replica, so that each request is an EVALSHA and a WAIT (replicas = 1)
    master = R.start { args = { "--repl-diskless-sync-delay", "0" } }
    replica = R.start { args = { "--replicaof", "127.0.0.1", tostring(master.port) } }
    R.until_true(function()
      local out = R.sh(("printf 'SET warm 1\\nWAIT 1 100\\n' | redis-cli -p %d"):format(master.port))
      return out == "OK\n1\n"
    end, 10, "replica acknowledging")
  end)

  lazy_teardown(function()
    if replica then replica:stop() end
    if master then master:stop() end
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
