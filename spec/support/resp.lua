-- The harness's own Redis client: one short connection per call over
-- LuaSocket (TCP or the server's Unix socket), RESP2 written and read here.
-- It is independent of the fluxalock core under test, and it replaces a
-- fork of a shell and redis-cli per call.  The connection lives for one
-- call only, as redis-cli's did: a spec that counts a server's clients
-- never sees an idle connection of the harness.
local socket = require "socket"
local unix = require "socket.unix"

local M = {}

local function encode(args)
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- one reply -> a Lua value: strings, integers, tables (arrays, with n),
-- false for a nil reply, { err = text } for an error reply
local function read(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local t, rest = line:sub(1, 1), line:sub(2)
  if t == "+" then return rest end
  if t == "-" then return { err = rest } end
  if t == ":" then return math.tointeger(tonumber(rest)) end
  if t == "$" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local s, rerr = c:receive(n + 2)
    if not s then return nil, rerr end
    return s:sub(1, n)
  end
  if t == "*" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local a = { n = n }
    for i = 1, n do
      local v, verr = read(c)
      if v == nil then return nil, verr end
      a[i] = v
    end
    return a
  end
  return nil, "protocol error: " .. line
end

-- as redis-cli prints a reply when its output is not a terminal: a line
-- per value, an error followed by an empty line, an empty array as an
-- empty line, and a reply that is one text ending in a newline (CLIENT
-- LIST, INFO) as it is
local function format(v, top)
  if type(v) == "table" and v.err then return v.err .. "\n\n" end
  if type(v) == "table" then
    if v.n == 0 then return "\n" end
    local out = {}
    for i = 1, v.n do out[i] = format(v[i], false) end
    return table.concat(out)
  end
  if v == false then return "\n" end
  v = tostring(v)
  if top and v:sub(-1) == "\n" then return v end
  return v .. "\n"
end

local function connect(where, timeout)
  local c, err
  if where.socket then
    c = unix()
    c:settimeout(timeout)
    local ok
    ok, err = c:connect(where.socket)
    if not ok then c:close() c = nil end
  else
    c, err = socket.connect(where.host or "127.0.0.1", where.port)
    if c then c:settimeout(timeout) end
  end
  return c, err
end

-- M.call(where, password, args...) -> the reply as a Lua value, or nil, err
-- where: { socket = path } or { host =, port = }
function M.call(where, password, ...)
  local c, err = connect(where, 60)
  if not c then return nil, err end
  local req = encode { ... }
  if password then req = encode { "AUTH", password } .. req end
  local ok
  ok, err = c:send(req)
  local v
  if ok and password then v, err = read(c) end
  if ok and err == nil then v, err = read(c) end
  c:close()
  if v == nil then return nil, err end
  return v
end

-- M.cli(where, password, args...) -> the reply as redis-cli's text (no
-- trailing newline), or the text of the failure
function M.cli(where, password, ...)
  local v, err = M.call(where, password, ...)
  if v == nil then
    return ("Could not connect to Redis at %s: %s"):format(where.socket or
      ((where.host or "127.0.0.1") .. ":" .. where.port), tostring(err))
  end
  return (format(v, true):gsub("\n$", ""))
end

return M
