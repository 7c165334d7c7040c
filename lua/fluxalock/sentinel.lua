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
-- came back as a replica and refused the write with READONLY): each sentinel
-- in turn is asked SENTINEL get-master-addr-by-name, and the answer is
-- believed only when ROLE on that server says "master".
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
    sentinels = {},
    last = 1,             -- the sentinel that answered last
    resolved = false,
    host = nil,
    log = nil,            -- the locker's log function (pool:setlog)
    failovers = 0,        -- times the master was found at another address
  }, Pool)
  for i, s in ipairs(o.sentinels) do
    local host, port = config.hostport(s)
    self.sentinels[i] = { host = host, port = port, password = o.sentinel_password,
                          connect_timeout = o.connect_timeout, timeout = o.timeout,
                          tls = o.tls } -- sentinels speak TLS when the pool does
  end
  self.group:group("sentinel", { self.core }, "sentinel:" .. o.master)
  self.group:setrecover(function()
    self.resolved = false
    return self:discover() == true
  end)
  return self
end

-- find the master; true | nil, message, code (the first failure's code:
-- "connect" when no sentinel could be reached; "server" when they answered
-- but named no master)
function Pool:discover()
  local errs, n, first = {}, #self.sentinels, nil
  for i = 0, n - 1 do
    local idx = (self.last + i - 1) % n + 1
    local sp = core.pool(self.sentinels[idx])
    if self.host then sp:sethost(self.host) end
    if self.log then sp:setlog(self.log) end
    local addr, err, code = sp:call { "SENTINEL", "get-master-addr-by-name", self.master }
    sp:close()
    if type(addr) == "table" and addr[1] and tonumber(addr[2]) then
      self.core:retarget(addr[1], tonumber(addr[2]))
      local role, rerr, rcode = self.core:call { "ROLE" }
      if type(role) == "table" and role[1] == "master" then
        local at = addr[1] .. ":" .. addr[2]
        if self.master_at and self.master_at ~= at then self.failovers = self.failovers + 1 end
        self.master_at = at
        self.last, self.resolved = idx, true
        return true
      end
      errs[#errs + 1] = role and ("%s:%s is a %s"):format(addr[1], addr[2], tostring(role[1])) or rerr
      first = first or (role and "server" or rcode)
    elseif addr ~= nil then
      errs[#errs + 1] = ("sentinel %s:%d knows no master '%s'"):format(
        self.sentinels[idx].host, self.sentinels[idx].port, self.master)
      first = first or "server"
    else
      errs[#errs + 1] = err
      first = first or code
    end
  end
  return nil, ("fluxalock: sentinel master '%s': not found (%s)"):format(self.master, table.concat(errs, "; ")),
    first or "io"
end

-- for core.renew: the master's name, the sentinels' password, then host,
-- port of each sentinel (the renewal thread asks them after a failure)
function Pool:renewal()
  local t = { self.master, self.sentinels[1].password }
  for i, s in ipairs(self.sentinels) do
    t[1 + 2 * i] = s.host
    t[2 + 2 * i] = s.port
  end
  return table.unpack(t, 1, 2 + 2 * #self.sentinels)
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
