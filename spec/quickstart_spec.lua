-- The README's Quick start as a reader follows it: job.lua, saved from the
-- README, run from the checkout's root; one copy holding the lock for 3 s
-- ('lua5.4 job.lua 3') makes a second copy wait for the release.  (That the
-- program runs alone is docs_spec's.)
local R = require "support.redis"

local root = R.sh("pwd"):gsub("%s+$", "")

-- the Quick start's job.lua: the README's Lua block that obtains "nightly-report"
local function job_lua()
  local f = assert(io.open("README.md"))
  local text = f:read("a")
  f:close()
  for code in text:gmatch("\n```lua\n(.-\n)```\n") do
    if code:find('obtain("nightly-report"', 1, true) then return code end
  end
  error("README.md has no job.lua block")
end

local function read(path)
  local f = io.open(path)
  local s = f and f:read("a") or ""
  if f then f:close() end
  return s
end

describe("the README's Quick start", function()
  local server
  R.setup({ module = false }, function(e) server = e.server end)

  it("job.lua 3 holds the lock; a second copy started meanwhile waits, then gets it", function()
    local dir = R.tmpdir("quickstart")
    local f = assert(io.open(dir .. "/job.lua", "w"))
    f:write(job_lua())
    f:close()
    local env = ("cd %s && export FLUXALOCK_URL=%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' && ")
      :format(R.quote(root), R.quote(server.url))
    local first = R.track(tonumber((R.sh(("exec 3>&-; %s lua5.4 %s 3 > %s 2>&1 & echo $!")
      :format(env, R.quote(dir .. "/job.lua"), R.quote(dir .. "/first"))))))
    R.until_true(function() return read(dir .. "/first"):find("\n") end, 20, "the first copy's line")
    local t0 = R.now()
    local second = R.sh(("%s lua5.4 %s 2>&1"):format(env, R.quote(dir .. "/job.lua")))
    local waited = R.now() - t0
    R.until_true(function() return not R.alive(first) end, 20, "the first copy's end")
    local n1 = tonumber(read(dir .. "/first"):match("^got the lock, fence (%d+)\n$"))
    local n2 = tonumber(second:match("^got the lock, fence (%d+)\n$"))
    assert.truthy(n1, read(dir .. "/first"))
    assert.truthy(n2, second)
    assert.equal(n1 + 1, n2) -- the next holder
    -- it could not have its line before the first's 3 s were mostly over
    assert.is_true(waited > 1, ("the second copy got the lock after %.2f s"):format(waited))
    assert.equal("", server:cli("GET", "nightly-report")) -- released again
  end)
end)
