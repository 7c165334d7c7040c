-- Sentinel discovery's failures, said as csrc/sentinel.c says them (the
-- one place of its rules, for the Lua layer and the renewal thread): a
-- sentinel that answers but monitors no master of that name is one of the
-- failures listed, with the code "server", in a plain script and under a
-- host (the questions go out as pool calls there, yielding to the loop).
local Top = require "support.topology"
local H = require "support.hosts"

local fluxalock = require "fluxalock"

local under = H.under -- (plain, or in a coroutine of a real luv loop)

describe("Sentinel discovery", function()
  local env = Top.setup_sentinels("known")

  for _, host in ipairs { "plain", "luv" } do
    it("(" .. host .. ") lists a sentinel that knows no such master, code 'server'", function()
      local lock, err, code = under(host, function()
        return fluxalock.locker { sentinels = { env.sentinels[1].addr }, master = "unknown",
                                  timeout = 0.5, connect_timeout = 0.5 }:obtain("k", 5)
      end)
      assert.is_nil(lock)
      assert.equal(("fluxalock: sentinel master 'unknown': not found (sentinel %s knows no master 'unknown')")
        :format(env.sentinels[1].addr), err)
      assert.equal("server", code)
      -- the same sentinel, asked for the master it monitors: found
      local ok = under(host, function()
        local l = fluxalock.locker { sentinels = { env.sentinels[1].addr }, master = "known",
                                     timeout = 0.5, connect_timeout = 0.5 }
        local got = assert(l:obtain("k", 5))
        return got:release()
      end)
      assert.is_true(ok)
    end)
  end
end)
