-- fluxalock: a distributed lock for Lua 5.4, backed by Redis.
--
--   local fluxalock = require "fluxalock"
--   local lock <close>, err = fluxalock.locker():obtain("nightly-report", 60, 5)
--   if not lock then print(err) return end
--
-- This layer holds configuration, pools, validation and the waiting policy;
-- the C core (fluxalock.core) speaks to Redis.  See README.md for the API.

local core = require "fluxalock.core"
local config = require "fluxalock.config"

local type, error, getmetatable, setmetatable = type, error, getmetatable, setmetatable
local min, now = math.min, core.now

local M = {
  NOT_OBTAINED = "not obtained",
  DEFAULT_POOL = "default",
  _VERSION = "fluxalock " .. core.version,
}
local NOT_OBTAINED = M.NOT_OBTAINED

local specs = {}            -- name -> the pool as given to configure (a copy)
local pools = {}            -- name -> normalized options (configured)
local defaults = nil        -- configure{defaults = ...}
local lockers = {}          -- name -> Locker of a configured pool
local by_url = setmetatable({}, { __mode = "v" }) -- URL -> Locker
local host_wait = nil       -- the event-loop host's wait function, or nil

-- ---- argument checks: misuse raises, naming the argument --------------------

local function argerror(n, fname, msg, level)
  -- level 3: the caller of the API function that called us (4 from a
  -- helper of that function), so the message points at the user's line
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 3)
end

-- seconds -> whole milliseconds (>= 1), or raise naming argument n
local function duration(v, n, fname, what)
  if type(v) ~= "number" then
    argerror(n, fname, ("%s must be a number of seconds, got %s"):format(what, type(v)), 4)
  end
  if v ~= v then argerror(n, fname, what .. " must not be NaN", 4) end
  if v < 0.001 then argerror(n, fname, what .. " must be at least 0.001 seconds", 4) end
  if v > 1e9 then argerror(n, fname, what .. " must not exceed 1e9 seconds", 4) end
  return (v * 1000 + 0.5) // 1
end

-- obtain's 4th argument -> the renewal interval in ms, or nil (no renewal)
local function renew_interval(opts, ttl, ms)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    argerror(4, "obtain", "options must be a table, got " .. type(opts), 4)
  end
  for k in pairs(opts) do
    if k ~= "renew" then argerror(4, "obtain", ("unknown option '%s'"):format(tostring(k)), 4) end
  end
  local r = opts.renew
  if r == nil or r == false then return nil end
  if r == true then return ms // 3 > 0 and ms // 3 or 1 end
  if type(r) ~= "number" then
    argerror(4, "obtain", "option 'renew' must be a boolean or a number of seconds, got " .. type(r), 4)
  end
  if r ~= r then argerror(4, "obtain", "renew interval must not be NaN", 4) end
  if r < 0 then argerror(4, "obtain", "renew interval must not be negative", 4) end
  if r < 0.001 then argerror(4, "obtain", "renew interval must be at least 0.001 seconds", 4) end
  if r >= ttl then argerror(4, "obtain", "renew interval must be less than ttl", 4) end
  local every = (r * 1000 + 0.5) // 1
  if every >= ms then argerror(4, "obtain", "renew interval must be less than ttl", 4) end
  return every
end

-- a fresh lock handed to the renewal thread (csrc/renew.c); if that fails
-- the lock is released: a caller that asked for renewal never gets a lock
-- that silently expires
local function renewed(pool, lock, ms, every, sent)
  local ok, err
  if pool.renewal then -- Sentinel: the thread asks the sentinels itself
    ok, err = core.renew(lock, ms, every, sent, pool:renewal())
  else
    ok, err = core.renew(lock, ms, every, sent)
  end
  if ok then return lock end
  lock:release()
  return nil, err or "fluxalock: renew: the lock was lost before its renewal started"
end

-- ---- Locker ------------------------------------------------------------------

local Locker = { __name = "fluxalock.Locker" }
Locker.__index = Locker

-- the engine of a pool: a core Pool (one server, a Redlock group, a
-- cluster) or, for Sentinel, a Lua object with the same methods
local function new_pool(o)
  if o.kind == "sentinels" then return require("fluxalock.sentinel").pool(o) end
  if o.kind == "redlock" then return require("fluxalock.redlock").pool(o) end
  if o.kind == "cluster" then return require("fluxalock.cluster").pool(o) end
  return core.pool(o)
end

local function new_locker(name, o)
  local pool = new_pool(o)
  if host_wait then pool:sethost(host_wait) end
  return setmetatable({
    name = name,
    _pool = pool,
    _where = config.where(o),
    _step = o.retry_step,
    _max = o.retry_max,
  }, Locker)
end

function Locker.__tostring(self)
  return ("fluxalock.Locker: %s (%s)"):format(self.name, self._where)
end

--- locker:obtain(key, ttl [, wait [, opts]]) -> lock | nil, "not obtained" | nil, message
-- opts.renew = true | seconds: keep the lock alive until it is released
function Locker.obtain(self, key, ttl, wait, opts)
  if getmetatable(self) ~= Locker then
    error(("calling 'obtain' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  if type(key) ~= "string" then
    argerror(1, "obtain", "key must be a string, got " .. type(key))
  end
  if key == "" then argerror(1, "obtain", "key must not be empty") end
  local ms = duration(ttl, 2, "obtain", "ttl")
  if wait == nil then
    wait = 0
  else
    if type(wait) ~= "number" then
      argerror(3, "obtain", "wait timeout must be a number of seconds, got " .. type(wait))
    end
    if wait ~= wait then argerror(3, "obtain", "wait timeout must not be NaN") end
    if wait < 0 then argerror(3, "obtain", "wait timeout must not be negative") end
    if wait > ttl then argerror(3, "obtain", "wait timeout must not exceed ttl") end
  end
  local every = renew_interval(opts, ttl, ms)
  local pool = self._pool
  local sent = now() -- the renewal's first deadline counts from the send
  if wait == 0 then
    local lock, err = pool:obtain(key, ms, 0)
    if lock then
      if every then return renewed(pool, lock, ms, every, sent) end
      return lock
    end
    if lock == false then return nil, NOT_OBTAINED end
    return nil, err
  end
  -- Waiting: a failed try marks the holder's value, so its release pushes a
  -- wake-up that one waiter pops (BLPOP) at once.  Each wait is also a
  -- linear backoff step (retry_step, 2*retry_step, ... up to retry_max): an
  -- expired lock or a lost wake-up is noticed at the latest by the next step.
  -- No wait runs past the deadline, and a last try is made at it.
  local deadline = now() + wait
  local lock, err = pool:obtain(key, ms, 1)
  local step, smax, pause = self._step, self._max, 0
  while not lock do
    if lock == nil then return nil, err end
    local left = deadline - now()
    if left <= 0 then return nil, NOT_OBTAINED end
    pause = min(pause + step, smax)
    if left >= 0.001 then
      -- the server times BLPOP out coarsely: 'left' is enforced client-side
      local ok, werr = pool:await(key, min(pause, left), left)
      if ok == nil then return nil, werr end
    end
    sent = now()
    lock, err = pool:obtain(key, ms, 2)
  end
  if every then return renewed(pool, lock, ms, every, sent) end
  return lock
end

--- locker:close(): drop this locker's idle connections (the next call
--- reconnects).  Locks stay valid.
function Locker.close(self)
  if getmetatable(self) ~= Locker then
    error(("calling 'close' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  self._pool:close()
end

-- ---- module functions ---------------------------------------------------------

local function default_options()
  local url = os.getenv("FLUXALOCK_URL")
  if url == "" then url = nil end -- an empty variable counts as unset
  return config.pool(M.DEFAULT_POOL, url or config.DEFAULT_URL, defaults)
end

--- fluxalock.configure(config) -> true
-- Pools named in config.pools are (re)defined (false removes one); others
-- stay.  config.defaults apply to every pool that does not set an option
-- itself, whenever it was defined.  All of it is checked before any of it
-- is applied: an invalid config changes nothing.
function M.configure(cfg)
  local ok, given, newdefaults = pcall(config.check, cfg, defaults)
  if not ok then error("fluxalock.configure: " .. given, 2) end
  if cfg.defaults == nil then newdefaults = defaults end
  local wait = host_wait
  if cfg.host ~= nil then
    local hok, w = pcall(function() return require("fluxalock.host").resolve(cfg.host) end)
    if not hok then error("fluxalock.configure: " .. tostring(w), 2) end
    wait = w
  end
  local newspecs, newpools = {}, {}
  for name, spec in pairs(specs) do newspecs[name] = spec end
  for name, spec in pairs(given) do newspecs[name] = spec or nil end
  for name, spec in pairs(newspecs) do
    local pok, o = pcall(config.pool, name, spec, newdefaults)
    if not pok then error("fluxalock.configure: " .. o, 2) end
    newpools[name] = o
  end
  local old_default = not pools[M.DEFAULT_POOL] and lockers[M.DEFAULT_POOL] and default_options()
  -- everything is valid: apply it
  specs, defaults = newspecs, newdefaults
  for name, l in pairs(lockers) do
    local o = newpools[name] or (name == M.DEFAULT_POOL and default_options())
    local before = pools[name] or (name == M.DEFAULT_POOL and old_default)
    if not o or not before or config.signature(before) ~= config.signature(o) then
      lockers[name] = nil
    elseif wait ~= host_wait then
      l._pool:sethost(wait)
    end
  end
  pools = newpools
  if wait ~= host_wait then
    host_wait = wait
    for _, l in pairs(by_url) do l._pool:sethost(wait) end
  end
  return true
end

--- fluxalock.locker([pool]) -> Locker
function M.locker(pool)
  if pool == nil then pool = M.DEFAULT_POOL end
  local tp = type(pool)
  if tp == "string" then
    local l = lockers[pool]
    if l then return l end
    local o = pools[pool]
    if not o and pool == M.DEFAULT_POOL then o = default_options() end
    if o then
      l = new_locker(pool, o)
      lockers[pool] = l
      return l
    end
    if not pool:find("://", 1, true) then
      error(("bad argument #1 to 'locker' (unknown pool '%s')"):format(pool), 2)
    end
    l = by_url[pool]
    if l then return l end
    -- the URL names the pool in errors: hide all of its userinfo (up to the
    -- last '@', as the parser reads it; a password may hold '/' or '@')
    local ok, opts = pcall(config.pool, pool:gsub("^([^/]*//).*@", "%1***@"), pool, defaults)
    if not ok then error("bad argument #1 to 'locker' (" .. opts .. ")", 2) end
    l = new_locker(config.where(opts), opts)
    by_url[pool] = l
    return l
  elseif tp == "table" then
    local ok, opts = pcall(config.pool, "(table)", pool, defaults)
    if not ok then error("bad argument #1 to 'locker' (" .. opts .. ")", 2) end
    return new_locker(config.where(opts), opts)
  end
  error("bad argument #1 to 'locker' (pool name, URL or options table expected, got " .. tp .. ")", 2)
end

return M
