-- fluxalock.sentinel: a pool whose master is found through Redis Sentinel.
--
-- It has the methods of a core Pool that the Locker uses (obtain, await,
-- call, close, sethost, where).  The core pool 'data' speaks to the master
-- and is pointed elsewhere after a failover (pool:retarget); locks belong to
-- the 'group' around it (csrc/kind_sentinel.c), so they follow it, and a lock whose
-- release/ttl/refresh fails asks this layer to look again (setrecover)
-- before trying once more.
--
-- Nothing connects before the first call.  The master is looked up on the
-- first call, and again after any call that failed (the master died, or it
-- came back as a replica and refused the write with READONLY).  The rules
-- of that discovery are csrc/sentinel.c's, shared with the renewal thread
-- (each sentinel in turn from the one that answered last, SENTINEL
-- get-master-addr-by-name, believed only when ROLE on that server says
-- "master"); this layer only sends its questions, as pool calls, so a
-- host's loop runs meanwhile.
local core = require "fluxalock.core"
local config = require "fluxalock.config"

local M = {}

local Pool = {}
Pool.__index = Pool

function M.pool(o)
  local self = setmetatable({
    core = core.pool(o),  -- points nowhere useful until discovered
    group = core.pool(o),
    master = o.master,
    resolved = false,
    host = nil,
    log = nil,            -- the locker's log function (pool:setlog)
    failovers = 0,        -- times the master was found at another address
  }, Pool)
  -- the sentinels: with the pool's timeouts and TLS (csrc/sentinel.c)
  local list = { master = o.master, password = o.sentinel_password }
  for i, s in ipairs(o.sentinels) do
    list[2 * i - 1], list[2 * i] = config.hostport(s)
  end
  self.group:group("sentinel", { self.core }, "sentinel:" .. o.master, list)
  self.group:setrecover(function()
    self.resolved = false
    return self:discover() == true
  end)
  return self
end

-- find the master: one round of csrc/sentinel.c, whose questions go out
-- here (a sentinel's through a pool of its own, closed after; ROLE through
-- the data pool, pointed at the address named) and which judges each reply
-- -> true | nil, message, code (the first failure's code: "connect" when no
-- sentinel could be reached; "server" when they answered but named no master)
function Pool:discover()
  local round = self.group:discovery()
  while true do
    local ask, a, b = round:next()
    if ask == "sentinel" then
      local sp = self.group:sentinel(a)
      if self.host then sp:sethost(self.host) end
      if self.log then sp:setlog(self.log) end
      sp:call(round)
      sp:close()
    elseif ask == "role" then
      self.core:retarget(a, b)
      self.core:call(round)
    elseif ask then
      local at = a .. ":" .. b
      if self.master_at and self.master_at ~= at then self.failovers = self.failovers + 1 end
      self.master_at, self.resolved = at, true
      return true
    else
      return nil, a, b
    end
  end
end

function Pool:obtain(key, ms, mode)
  if not self.resolved then
    local ok, err, code = self:discover()
    if not ok then return nil, err, code end
  end
  local lock, err, code = self.group:obtain(key, ms, mode)
  if lock == nil then
    -- the master may have moved: look again, and try once more there
    self.resolved = false
    if not self:discover() then return nil, err, code end
    lock, err, code = self.group:obtain(key, ms, mode)
    if lock == nil then self.resolved = false end
  end
  return lock, err, code
end

-- a failed wait is no verdict on the lock: the next obtain finds the master
function Pool:await(key, secs, limit)
  local ok, err = self.group:await(key, secs, limit)
  if ok == nil then
    self.resolved = false
    return false, err
  end
  return ok
end

function Pool:call(cmd)
  if not self.resolved then
    local ok, err, code = self:discover()
    if not ok then return nil, err, code end
  end
  local r, err, code = self.core:call(cmd)
  if r == nil then self.resolved = false end
  return r, err, code
end

function Pool:close() self.group:close() end
function Pool:where() return self.core:where() end
function Pool:connections() return self.core:connections() end

function Pool:setlog(fn)
  self.log = fn
  self.core:setlog(fn)
  self.group:setlog(fn)
end

-- the group's counters (with its node's reconnects), and failovers
function Pool:counts()
  local t = self.group:counts()
  t.failovers = self.failovers
  return t
end

function Pool:sethost(fn)
  self.host = fn
  self.core:sethost(fn)
  self.group:sethost(fn)
end

return M
