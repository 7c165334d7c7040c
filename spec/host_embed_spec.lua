-- examples/embed: a C program that embeds Lua, runs scripts as coroutines
-- from its own poll(2) loop with fluxalock's custom host, and checks its own
-- result (exit status 0 only with every coroutine done and no overlap).
local R = require "support.redis"

describe("the embedding example (examples/embed)", function()
  local server, tmp

  lazy_setup(function()
    local out, ok = R.sh("make --no-print-directory examples 2>&1")
    assert(ok, out)
    server = R.start()
    tmp = R.tmpdir("embed")
  end)

  lazy_teardown(function()
    if server then server:stop() end
    if tmp then R.sh("rm -rf " .. R.quote(tmp)) end
  end)

  -- run the program; returns its output and exit status
  local function embed(...)
    local args = { "timeout", "60", "examples/embed/embed" }
    for _, a in ipairs { ... } do args[#args + 1] = R.quote(a) end
    local cmd = ("FLUXALOCK_URL=%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' %s 2>&1")
      :format(R.quote(server.url), table.concat(args, " "))
    local out, _, code = R.sh(cmd)
    return out, code
  end

  it("runs 40 coroutines contending for 4 keys from its poll loop, with no overlap", function()
    local out, code = embed("-n", "20", "examples/embed/worker.lua", "examples/embed/refresher.lua")
    assert.equal(0, code, out)
    assert.matches("embed: 40 coroutines, 0 failed, 120 critical sections, 0 overlaps", out)
    for i = 0, 3 do assert.equal("0", server:cli("EXISTS", "embed:" .. i)) end
  end)

  it("fails when two coroutines are inside at once (its check can fail)", function()
    local f = assert(io.open(tmp .. "/unlocked.lua", "w"))
    f:write [[
      embed.enter("shared") -- no lock taken
      embed.sleep(0.01)
      embed.leave("shared")
    ]]
    f:close()
    local out, code = embed("-n", "3", tmp .. "/unlocked.lua")
    assert.equal(1, code, out)
    assert.matches("[1-9]%d* overlaps", out)
    assert.matches("embed: FAILED", out)
  end)

  it("fails when a script fails, with the script's error", function()
    local f = assert(io.open(tmp .. "/broken.lua", "w"))
    f:write [[
      local lock <close> = assert(require("fluxalock").locker():obtain("embed:broken", 5))
      embed.sleep(0.001)
      error("broken on purpose")
    ]]
    f:close()
    local out, code = embed(tmp .. "/broken.lua")
    assert.equal(1, code, out)
    assert.matches("broken on purpose", out)
    -- the lock of the dead coroutine is still released (by lua_close at exit)
    assert.equal("0", server:cli("EXISTS", "embed:broken"))
  end)
end)
