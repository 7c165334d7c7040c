-- The wake-up subscription (csrc/wake.c): under a host, a waiter is woken
-- by a release in another process through one message, not by its backoff
-- steps.  The pools here have slow backoff steps (the first pause is
-- 2.5-5 s, with jitter), so a waiter that obtains well before its first
-- step can only have been woken: the bound below (2 s) holds on a loaded
-- machine and still says so.
local R = require "support.redis"
local T = require "support.topology"
local H = require "support.hosts"
local core = require "fluxalock.core"
local uv = require "luv"

local STEP = 5 -- the first backoff pause is 2.5-5 s (jitter)

-- a plain process: waits for the file 'go', releases 'key' (held by a
-- lock it obtained), prints when; POOL is the pool's options as Lua
local RELEASER = [[
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"
fluxalock.configure { pools = { default = load("return " .. os.getenv("POOL"))() } }
local lock = assert(fluxalock.locker():obtain(os.getenv("KEY"), 30))
io.open(os.getenv("HELD"), "w"):close()
while not io.open(os.getenv("GO")) do core.sleep(0.005) end
assert(lock:release())
print(("released=%.6f"):format(core.now()))
]]

-- the same, but its release reaches the first node of its Redlock group
-- 60 ms before the others (as from nodes at other distances, or a loaded
-- machine): the lock key and the wake-up message there, as the release
-- script does, then the key on the other nodes
local STAGGERED = [[
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"
local resp = require "support.resp"
local urls = load("return " .. os.getenv("POOL"))().redlock
fluxalock.configure { pools = { default = { redlock = urls } } }
local key = os.getenv("KEY")
local lock = assert(fluxalock.locker():obtain(key, 30))
io.open(os.getenv("HELD"), "w"):close()
while not io.open(os.getenv("GO")) do core.sleep(0.005) end
local function node(i) return { port = tonumber(urls[i]:match(":(%d+)/")) } end
assert(resp.call(node(1), nil, "DEL", key) == 1)
assert(resp.call(node(1), nil, "PUBLISH", "fluxalock:wake:" .. key, "1") == 1)
local released = core.now()
core.sleep(0.06) -- the subject: the other nodes' releases come later
for i = 2, 3 do assert(resp.call(node(i), nil, "DEL", key) == 1) end
print(("released=%.6f"):format(released))
lock:release() -- not held any more: false
]]

-- another process holds 'key' and releases it once this process's waiter
-- (under luv, with slow backoff steps) is subscribed: the waiter must
-- obtain within a few ms of the release.  pool: the options as Lua source
-- (for the other process) and as a table; servers: where the subscription
-- may be (a client in pub/sub mode shows it)
local function woken_by_other(dir, source, pool, servers, releaser)
  local held, go = dir .. "/held", dir .. "/go"
  local proc = R.spawn(releaser or RELEASER, { POOL = source, KEY = "wake:other", HELD = held, GO = go })
  R.until_true(function() local f = io.open(held) if f then f:close() end return f ~= nil end,
    20, "the other process to hold the lock")
  local fl = require "fluxalock"
  pool.retry_step, pool.retry_max = STEP, STEP
  fl.configure { pools = { default = pool }, host = "luv" }
  local got, err, got_at
  coroutine.wrap(function()
    local lock
    lock, err = fl.locker():obtain("wake:other", 30, 10)
    got_at = core.now()
    got = lock and lock:release()
  end)()
  -- the release comes once the waiter's subscription is in place (a
  -- server has a subscriber on the key's wake-up channel; a client in
  -- pub/sub mode is not enough: sentinels keep one on their master): a
  -- message published before would be missed by design, and cost one
  -- backoff step
  local t, t0, subscribed = uv.new_timer(), core.now(), false
  t:start(5, 5, function()
    for _, srv in ipairs(servers) do
      if srv:cli("PUBSUB", "CHANNELS"):find("wake:other", 1, true) then subscribed = true end
    end
    if not subscribed and core.now() - t0 < 5 then return end
    t:close()
    io.open(go, "w"):close()
  end)
  uv.run()
  local out = proc:wait(20)
  local released = tonumber(out:match("released=([%d.]+)"))
  assert(got, err)
  assert(released, out)
  assert.is_true(subscribed, "no server saw the subscription")
  -- woken by the release's message: a backoff step would have ended 2.5 s
  -- after the wait's start at the earliest (and the release comes after
  -- that start); 2 s leaves room for a loaded machine's stalls, not for a step
  assert.is_true(got_at - released < 2,
    ("woken %.0f ms after the release"):format((got_at - released) * 1000))
end

describe("the wake-up subscription under host 'luv'", function()
  local server, dir
  before_each(function()
    server = R.start()
    dir = R.tmpdir("wake")
  end)
  after_each(function()
    local fl = require "fluxalock"
    fl.configure { host = false }
    if server then server:stop() end
    R.sh("rm -rf " .. R.quote(dir))
  end)

  it("wakes a waiter when another process releases, before its first backoff step", function()
    woken_by_other(dir, ("%q"):format(server.url), { url = server.url }, { server })
  end)

  it("subscribes over one connection of its own (a client in pub/sub mode) while a key has waiters", function()
    local _, holder, locker = H.luv_held(server, "wake:count", { retry_step = STEP, retry_max = STEP })
    local seen
    coroutine.wrap(function()
      local lock = assert(locker:obtain("wake:count", 30, 10))
      assert.is_true(lock:release())
    end)()
    -- from the server: the subscriber is a client in pub/sub mode
    local t, t0 = uv.new_timer(), core.now()
    t:start(10, 10, function()
      local list = server:cli("CLIENT", "LIST")
      if not list:find("sub=1", 1, true) and core.now() - t0 < 5 then return end
      t:close()
      seen = list
      coroutine.wrap(function() assert.is_true(holder:release()) end)()
    end)
    uv.run()
    assert.equal(1, select(2, seen:gsub("sub=1", "")), seen)
  end)

  it("skips a waiter whose coroutine was closed while it waited: the next one gets the key", function()
    local _, holder, locker = H.luv_held(server, "wake:closed")
    -- the first waiter is the head of the key's queue when it is closed
    local first = coroutine.create(function() locker:obtain("wake:closed", 30, 20) end)
    assert(coroutine.resume(first))
    local got, err
    local t = uv.new_timer()
    t:start(5, 5, function()
      if locker:stats().waiting < 1 then return end
      t:close()
      assert(coroutine.close(first))
      coroutine.wrap(function()
        local lock
        lock, err = locker:obtain("wake:closed", 30, 5)
        got = lock and lock:release()
      end)()
      local r = uv.new_timer()
      r:start(100, 0, function()
        r:close()
        coroutine.wrap(function() assert.is_true(holder:release()) end)()
      end)
    end)
    uv.run()
    assert.is_true(got, err)
  end)
end)

describe("the wake-up subscription of a group pool under host 'luv'", function()
  local dir
  before_each(function() dir = R.tmpdir("wake") end)
  after_each(function()
    require("fluxalock").configure { host = false }
    R.sh("rm -rf " .. R.quote(dir))
  end)

  it("Redlock: wakes a waiter when another process releases, before its first backoff step", function()
    local servers, urls = R.servers(3)
    finally(function() for _, srv in ipairs(servers) do srv:stop() end end)
    local source = ("{ redlock = { %q, %q, %q } }"):format(urls[1], urls[2], urls[3])
    woken_by_other(dir, source, { redlock = urls }, servers)
  end)

  it("Redlock: a head woken by the first node's release waits for the other nodes' (60 ms later), "
    .. "not for its backoff step", function()
    local servers, urls = R.servers(3)
    finally(function() for _, srv in ipairs(servers) do srv:stop() end end)
    local source = ("{ redlock = { %q, %q, %q } }"):format(urls[1], urls[2], urls[3])
    woken_by_other(dir, source, { redlock = urls }, servers, STAGGERED)
  end)

  it("Sentinel: wakes a waiter when another process releases, before its first backoff step", function()
    local master, _, _, addrs, stop = T.replicated("wakeset")
    finally(stop)
    local source = ("{ sentinels = { %q, %q, %q }, master = 'wakeset' }"):format(addrs[1], addrs[2], addrs[3])
    woken_by_other(dir, source, { sentinels = addrs, master = "wakeset" }, { master })
  end)

  it("Cluster: wakes a waiter when another process releases, before its first backoff step", function()
    local c = T.cluster()
    finally(function() c:stop() end)
    local source = ("{ cluster = { %q } }"):format(c.seeds[1])
    woken_by_other(dir, source, { cluster = { c.seeds[1] } }, c.nodes)
  end)
end)
