-- A worker of the fault schedule (tools/safety/run.lua starts it as its own
-- OS process): it loops obtain, read the store, work, write the store with
-- the lock's fence, release, and appends one history line per round (see
-- tools/safety/check.lua).  HOST=luv runs COUNT workers as coroutines of one
-- luv loop instead of one.  Everything comes from the environment:
--   LEG, FIRST (index of the first worker), COUNT, HOST (proc | luv),
--   URL or SENTINELS ("h:p,h:p") + MASTER, REPLICAS (0 | 1), STORE_PORT,
--   RECORD, KEY, TTL, STORE (fenced | force), HISTORY, STOP (a file: the
--   workers end once it exists), SEED, ROOT (the checkout)
-- Odd workers renew their lock (obtain's renew option), even ones do not.
-- Under luv the store's calls (LuaSocket, a loopback server that is never
-- faulted) block the loop for their round trip; the lock's calls yield.
local env = os.getenv
local root = assert(env("ROOT"))
package.path = root .. "/examples/?.lua;" .. package.path
local fenced_store = require "fenced_store"
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"

local LEG, KEY, RECORD = env("LEG"), env("KEY"), env("RECORD")
local FIRST, COUNT = tonumber(env("FIRST")), tonumber(env("COUNT") or "1")
local TTL = tonumber(env("TTL"))
local FENCED = env("STORE") == "fenced"
local LUV = env("HOST") == "luv"
local STOP = env("STOP")

local pool = { timeout = 0.5, connect_timeout = 0.5 }
if env("SENTINELS") then
  pool.sentinels, pool.master = {}, env("MASTER")
  for a in env("SENTINELS"):gmatch("[^,]+") do pool.sentinels[#pool.sentinels + 1] = a end
else
  pool.url = env("URL")
end
if env("REPLICAS") == "1" then pool.replicas, pool.replica_timeout = 1, 0.2 end
fluxalock.configure { host = LUV and "luv" or nil, pools = { default = pool } }
local locker = fluxalock.locker()

local history = assert(io.open(env("HISTORY"), "a"))
local function log(rec)
  local words = {}
  for _, k in ipairs { "op", "leg", "w", "fence", "renew", "obtained", "read", "rseq", "rvalue",
                       "start", "finish", "write", "wseq", "value", "released" } do
    if rec[k] ~= nil then
      local v = rec[k]
      if math.type(v) == "float" then v = ("%.6f"):format(v) end
      words[#words + 1] = k .. "=" .. tostring(v)
    end
  end
  history:write(table.concat(words, " "), "\n")
  history:flush()
end

local sleep = core.sleep
if LUV then
  local uv = require "luv"
  sleep = function(s)
    local co = coroutine.running()
    local t = uv.new_timer()
    t:start(math.max(1, math.floor(s * 1000)), 0, function()
      t:close()
      assert(coroutine.resume(co))
    end)
    coroutine.yield()
  end
end

local function stopped()
  local f = io.open(STOP)
  if f then f:close() end
  return f ~= nil
end

local function outcome(ok, code)
  if ok then return "accepted" end
  return code == "stale" and "refused" or "error"
end

-- one worker: w its index, rng its own seeded random numbers
local function work(w, rng)
  local renew = w % 2 == 1
  local store = assert(fenced_store.connect("127.0.0.1", tonumber(env("STORE_PORT")), RECORD))
  while not stopped() do
    local lock, err = locker:obtain(KEY, TTL, TTL, renew and { renew = true } or nil)
    if lock then
      local fence = lock:fence()
      local rec = { op = "write", leg = LEG, w = w, fence = fence, renew = renew and 1 or 0, obtained = core.now() }
      store:call("SET", "safety:holder", w) -- the scheduler pauses a holder
      local v, rseq, rcode
      if FENCED then v, rseq, rcode = store:read(fence) else v, rseq, rcode = store:peek(fence) end
      rec.read, rec.rseq = outcome(v, rcode), v and rseq or nil
      if v then
        rec.rvalue = tonumber(v) or 0
        sleep(0.02 + rng() * 0.08) -- the work
        if renew and not lock:held() then
          rec.write = "skipped" -- renewal found the lease lost: a careful holder stops
        else
          rec.value = rec.rvalue + 1
          rec.start = core.now()
          local ok, wseq, wcode
          if FENCED then ok, wseq, wcode = store:write(fence, rec.value)
          else ok, wseq, wcode = store:force(fence, rec.value) end
          rec.finish = core.now()
          rec.write, rec.wseq = outcome(ok, wcode), ok and wseq or nil
        end
      end
      rec.finish = rec.finish or core.now()
      store:call("SET", "safety:holder", "")
      lock:release()
      rec.released = core.now()
      log(rec)
    else
      sleep(err == fluxalock.NOT_OBTAINED and 0.01 or 0.05) -- down or cut off: do not spin
    end
    sleep(0.02 + rng() * 0.04) -- between rounds: the load stays modest
  end
  store:close()
end

-- a seeded xorshift64* per worker: the runs repeat their choices
local function rng_new(seed)
  local s = seed * 0x9E3779B97F4A7C15 + 1
  return function()
    s = s ~ (s << 13)
    s = s ~ (s >> 7)
    s = s ~ (s << 17)
    return ((s >> 11) & 0x1FFFFFFFFFFFFF) / 0x20000000000000
  end
end
local seed = tonumber(env("SEED"))

if LUV then
  local uv = require "luv"
  local finished = 0
  for k = 0, COUNT - 1 do
    coroutine.wrap(function()
      work(FIRST + k, rng_new(seed + FIRST + k))
      finished = finished + 1
      if finished == COUNT then uv.stop() end
    end)()
  end
  uv.run()
else
  work(FIRST, rng_new(seed + FIRST))
end
history:close()
print("done")
