-- fluxalock.cluster: a pool over a Redis Cluster.
--
-- The C core routes every request by the lock key's hash slot and follows
-- MOVED and ASK itself (csrc/kind_cluster.c).  This layer keeps its slot map whole:
-- it loads CLUSTER SLOTS from any reachable node on the first call, after a
-- call failed (a node died: a replica takes over its slots), and after the
-- core followed a MOVED (slots were resharded or failed over).  It has the
-- methods of a core Pool that the Locker uses.
local core = require "fluxalock.core"
local config = require "fluxalock.config"

local M = {}

local Pool = {}
Pool.__index = Pool

function M.pool(o)
  local seeds = {}
  for i, s in ipairs(o.cluster) do
    local host, port = config.hostport(s)
    seeds[i] = { host, port }
  end
  local group = core.pool(o)
  group:group("cluster", seeds, "cluster(" .. o.cluster[1] .. ")")
  return setmetatable({ group = group, o = o, stale = true, moved = 0, reloads = 0 }, Pool)
end

-- load the slot map from the first node that answers; true | nil, message,
-- code (the first node's failure's).
-- Under a host many coroutines find the map stale at once: one loads it,
-- the others go on with the map they have (a MOVED still takes them to the
-- right node)
function Pool:refresh()
  if self.refreshing then return true end
  self.refreshing = true
  local ok, res, err, code = pcall(self.load, self)
  self.refreshing = false
  if not ok then error(res, 0) end
  return res, err, code
end

local function loaded(self, slots)
  self.group:setslots(slots)
  self.stale = false
  self.reloads = self.reloads + 1
  self.moved = self.group:redirects()
  return true
end

function Pool:load()
  -- over the group's own connections first (a node that refuses hands the
  -- call to the next one): no connection beyond the pool's bound
  local slots, _, first = self.group:call { "CLUSTER", "SLOTS" }
  if type(slots) == "table" and #slots > 0 then return loaded(self, slots) end
  local o, errs = self.o, {}
  for _, addr in ipairs(self.group:info().nodes) do
    local host, port = config.hostport(addr)
    local p = core.pool { host = host, port = port, username = o.username, password = o.password,
                          connect_timeout = o.connect_timeout, timeout = o.timeout,
                          tls = o.tls }
    if self.host then p:sethost(self.host) end
    if self.log then p:setlog(self.log) end
    local err, code
    slots, err, code = p:call { "CLUSTER", "SLOTS" }
    p:close()
    if type(slots) == "table" and #slots > 0 then return loaded(self, slots) end
    errs[#errs + 1] = err or (addr .. ": no slots")
    first = first or code or "server"
  end
  return nil, "fluxalock: cluster slots: no node answered (" .. table.concat(errs, "; ") .. ")",
    first or "server"
end

local function fresh(self)
  if not self.stale and self.group:redirects() ~= self.moved then self.stale = true end
  if self.stale then return self:refresh() end
  return true
end

function Pool:obtain(key, ms, mode)
  local ok, err, code = fresh(self)
  if not ok then return nil, err, code end
  local lock
  lock, err, code = self.group:obtain(key, ms, mode)
  if lock == nil and self:refresh() then -- a node gone: ask the cluster again
    lock, err, code = self.group:obtain(key, ms, mode)
  end
  return lock, err, code
end

function Pool:await(key, secs, limit)
  local ok, err = self.group:await(key, secs, limit)
  if ok == nil then
    self.stale = true
    return false, err -- the next obtain decides
  end
  return ok
end

function Pool:close() self.group:close() end
function Pool:where() return self.group:where() end
function Pool:connections() return self.group:connections() end
function Pool:info() return self.group:info() end

function Pool:setlog(fn)
  self.log = fn
  self.group:setlog(fn)
end

-- the group's counters (its nodes' reconnects included), MOVED and ASK apart,
-- and how often the slot map was loaded
function Pool:counts()
  local t = self.group:counts()
  t.moved, t.asked = self.group:redirects()
  t.slot_reloads = self.reloads
  return t
end

function Pool:sethost(fn)
  self.host = fn
  self.group:sethost(fn)
end

return M
