-- A fenced resource: a record kept on a Redis server of its own (not the
-- lock's) that refuses a holder whose lease ran out.  A lease alone cannot
-- stop a holder that was paused past its ttl (GC, SIGSTOP, a suspended VM)
-- and then writes; the fence of its lock (lock:fence(), strictly increasing
-- over every grant) lets the store tell it is stale.
--
-- The store keeps, in one hash, the value, the highest fence it has seen (a
-- read with a fence raises it too) and the fence of the last write it took.
-- One script on the store's server compares and sets them atomically:
--   read(fence)          refused if fence < highest seen
--   write(fence, value)  refused if fence < highest seen or fence <= last write's
-- A holder that reads with fence 10 and is overtaken by a holder with fence
-- 11 (which read or wrote meanwhile) cannot write any more: no stale write
-- and no lost update.  peek(fence) and force(fence, value) are a store
-- without fencing, for comparison: they take every read and write (the fence
-- is not checked).
--
-- Copy it, or require it (this directory on package.path):
--   local fenced_store = require "fenced_store"
--   local store = assert(fenced_store.connect("127.0.0.1", 6380, "invoice:42"))
--   local lock <close> = assert(locker:obtain("invoice:42", 10, 5))
--   local value = assert(store:read(lock:fence()))
--   assert(store:write(lock:fence(), value .. "+paid"))
--
-- Run as a program it shows a late write refused (the lock and the store on
-- the same server here, FLUXALOCK_URL's, for brevity):
--   FLUXALOCK_URL=redis://127.0.0.1:6379/0 lua5.4 examples/fenced_store.lua
local socket = require "socket"

local M = {}

-- the store's compare-and-set, run by the store's own server
-- KEYS[1]: the record; ARGV: op ("read", "write"; unfenced: "peek",
-- "force"), fence, value
-- -> { 1, seq, value } taken (seq: the store's order of what it took),
--    { 0, highest fence seen, last write's fence } refused
M.SCRIPT = [[
local seen = tonumber(redis.call('HGET', KEYS[1], 'seen') or '0')
local wrote = tonumber(redis.call('HGET', KEYS[1], 'wrote') or '0')
local op, fence = ARGV[1], tonumber(ARGV[2])
local fenced = op == 'read' or op == 'write'
if fenced and (fence < seen or (op == 'write' and fence <= wrote)) then
  return { 0, tostring(seen), tostring(wrote) }
end
if fenced and fence > seen then redis.call('HSET', KEYS[1], 'seen', ARGV[2]) end
if op == 'write' then redis.call('HSET', KEYS[1], 'wrote', ARGV[2]) end
if op == 'write' or op == 'force' then redis.call('HSET', KEYS[1], 'value', ARGV[3]) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
return { 1, seq, redis.call('HGET', KEYS[1], 'value') or '' }
]]

local Store = {}
Store.__index = Store

-- a RESP request on the store's connection -> the reply (tables for
-- arrays), or nil, message
local function reply(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local t, rest = line:sub(1, 1), line:sub(2)
  if t == "+" then return rest end
  if t == "-" then return nil, rest end
  if t == ":" then return math.tointeger(tonumber(rest)) end
  if t == "$" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local data, e = c:receive(n + 2)
    if not data then return nil, e end
    return data:sub(1, n)
  end
  if t == "*" then
    local list = {}
    for i = 1, tonumber(rest) do
      local v, e = reply(c)
      if v == nil then return nil, e end
      list[i] = v
    end
    return list
  end
  return nil, "unexpected reply " .. line
end

local open

-- store:call(command, ...) -> the reply, or nil, message (a Redis command on
-- the store's connection, opened again if it broke)
function Store:call(...)
  if not self.conn then
    local c, err = open(self.host, self.port, self.timeout)
    if not c then return nil, err end
    self.conn = c
  end
  local args = table.pack(...)
  local req = { "*" .. args.n .. "\r\n" }
  for i = 1, args.n do
    local a = tostring(args[i])
    req[#req + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  local ok, err = self.conn:send(table.concat(req))
  if not ok then return self:broken(err) end
  local v, rerr = reply(self.conn)
  if v == nil and rerr and (rerr == "closed" or rerr == "timeout") then return self:broken(rerr) end
  return v, rerr
end

-- a broken connection is closed and opened again at the next call
function Store:broken(err)
  self.conn:close()
  self.conn = nil
  return nil, "store: " .. tostring(err)
end

function open(host, port, timeout)
  local c, err = socket.connect(host, port)
  if not c then return nil, ("store: connect %s:%d: %s"):format(host, port, err) end
  c:settimeout(timeout)
  c:setoption("tcp-nodelay", true)
  return c
end

-- fenced_store.connect(host, port, record [, timeout]) -> store, or nil, message
function M.connect(host, port, record, timeout)
  local c, err = open(host, port, timeout or 1)
  if not c then return nil, err end
  return setmetatable({ conn = c, host = host, port = port, record = record, timeout = timeout or 1 }, Store)
end

function Store:run(op, fence, value)
  assert(math.type(fence) == "integer", "a fence is an integer (lock:fence())")
  local r, err = self:call("EVAL", M.SCRIPT, 1, self.record, op, fence, value or "")
  if type(r) ~= "table" then return nil, err or "store: unexpected reply", "io" end
  if r[1] == 0 then
    return nil, ("stale fence %d: the store has seen fence %s, its last write had fence %s")
      :format(fence, r[2], r[3]), "stale"
  end
  return r[3], r[2] -- the value, the store's sequence number of this operation
end

-- store:read(fence) -> value, seq | nil, message, "stale" (refused) or "io"
function Store:read(fence) return self:run("read", fence) end
-- store:write(fence, value) -> value, seq | nil, message, "stale" or "io"
function Store:write(fence, value) return self:run("write", fence, value) end
-- without fencing (for comparison): never refused
function Store:peek(fence) return self:run("peek", fence) end
function Store:force(fence, value) return self:run("force", fence, value) end

function Store:close()
  if self.conn then self.conn:close() self.conn = nil end
end

if ... == "fenced_store" then return M end

-- ---- the program: a holder paused past its ttl writes late -----------------
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"
local locker = fluxalock.locker()
local url = os.getenv("FLUXALOCK_URL") or "redis://127.0.0.1:6379/0"
local host, port = url:match("^redis://([^:/]+):?(%d*)")

local a = assert(locker:obtain("fenced-example", 0.2))
local store = assert(M.connect(host, tonumber(port) or 6379, "fenced-example:record"))
store:call("DEL", "fenced-example:record")
local value = assert(store:read(a:fence()))
print(("A READ %q WITH FENCE %d"):format(value, a:fence()))
-- A stalls (a GC pause, SIGSTOP) until its lease has run out in Redis
repeat core.sleep(0.05) until a:ttl() == 0
local b = assert(locker:obtain("fenced-example", 5))
assert(store:write(b:fence(), "written by B"))
print(("B WROTE WITH FENCE %d"):format(b:fence()))
assert(b:release())
local ok, err = store:write(a:fence(), "written by A, late")
print(ok and "A'S LATE WRITE WAS TAKEN" or "A'S LATE WRITE REFUSED: " .. err)
print(("A RELEASES: %s"):format(a:release()))
print(("RECORD: %q"):format(assert(store:read(b:fence()))))
store:call("DEL", "fenced-example:record")
store:close()
