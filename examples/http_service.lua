-- A web service guarding a cache stampede: lua-http on Lua 5.4 under the
-- cqueues host.  GET /item/<key> answers from a per-process cache that is
-- fresh for 0.5 s; on a miss the value comes from a slow backend, and
-- locker:once lets one request per key recompute it (one across all the
-- service's processes at a time, through the lock; the other requests of
-- this process wait for that result instead of for the lock).
--
--   lua5.4 examples/slow_backend.lua --port 8081 &
--   FLUXALOCK_URL=redis://127.0.0.1:6379/0 lua5.4 examples/http_service.lua \
--     --port 8080 --backend http://127.0.0.1:8081
--   curl http://127.0.0.1:8080/item/a        -> value of a
--
-- Options: --port N (0: any free port), --backend URL, --name NAME (sent to
-- the backend as X-Service), --fresh SECONDS (0.5), --guard once | obtain |
-- none.  'obtain' is the same service with a plain lock (each waiting
-- request takes the lock in turn, and finds the value already there);
-- 'none' has no guard at all (every miss calls the backend).
-- It prints "listening on http://127.0.0.1:<port>" once it accepts.
-- A failed recomputation answers 503 with the message.

-- Debian packages lua-http for Lua 5.1-5.3 only; its modules run on 5.4
if not pcall(require, "http.server") then
  package.path = package.path .. ";/usr/share/lua/5.3/?.lua;/usr/share/lua/5.3/?/init.lua"
    .. ";/usr/share/lua/5.2/?.lua;/usr/share/lua/5.2/?/init.lua"
end
local http_server = require "http.server"
local http_headers = require "http.headers"
local http_request = require "http.request"
local cqueues = require "cqueues"
local fluxalock = require "fluxalock"

local opts = { port = "8080", backend = "http://127.0.0.1:8081", name = "service", fresh = "0.5", guard = "once" }
local i = 1
while arg[i] do
  local name = arg[i]:match("^%-%-(%a+)$")
  if not name or opts[name] == nil or not arg[i + 1] then
    io.stderr:write("usage: lua5.4 examples/http_service.lua [--port N] [--backend URL] [--name NAME]"
      .. " [--fresh SECONDS] [--guard once|obtain|none]\n")
    os.exit(2)
  end
  opts[name] = arg[i + 1]
  i = i + 2
end
local FRESH = assert(tonumber(opts.fresh), "--fresh: a number of seconds")
local GUARD = opts.guard
assert(GUARD == "once" or GUARD == "obtain" or GUARD == "none", "--guard: once, obtain or none")

fluxalock.configure { host = "cqueues" } -- every lock wait yields to the loop
local locker = fluxalock.locker()        -- FLUXALOCK_URL, or redis://127.0.0.1:6379/0
local now = cqueues.monotime

-- the per-process cache: key -> { value, when it was fetched }
local cache = {}
local function fresh(key)
  local e = cache[key]
  if e and now() - e[2] < FRESH then return e[1] end
end

-- the slow part: one call of the backend -> value | nil, message
local function fetch(key)
  local req = http_request.new_from_uri(opts.backend .. "/" .. key)
  req.headers:upsert("x-service", opts.name)
  local headers, stream = req:go(5)
  if not headers then return nil, "backend: " .. tostring(stream) end
  local body, err = stream:get_body_as_string(5)
  if not body then return nil, "backend: " .. tostring(err) end
  if headers:get(":status") ~= "200" then return nil, "backend: status " .. headers:get(":status") end
  return body
end

-- recompute a key's value; under the lock, so first look again: another
-- request of this process may have filled the cache while this one waited
local function regen(key)
  local v = fresh(key)
  if v then return v end
  local body, err = fetch(key)
  if not body then return nil, err end
  cache[key] = { body, now() }
  return body
end

local function value(key)
  local v = fresh(key)
  if v then return v end
  if GUARD == "once" then
    -- one call per key in this process; the other requests get its result
    return locker:once("regen:" .. key, 5, 3, regen, key)
  elseif GUARD == "obtain" then
    local lock <close>, err = locker:obtain("regen:" .. key, 5, 3)
    if not lock then return nil, err end
    return regen(key)
  end
  return regen(key)
end

local function reply(stream, status, body)
  local h = http_headers.new()
  h:append(":status", status)
  h:append("content-type", "text/plain")
  stream:write_headers(h, false)
  stream:write_chunk(body, true)
end

local server = assert(http_server.listen {
  host = "127.0.0.1",
  port = assert(tonumber(opts.port), "--port: a number"),
  onstream = function(_, stream)
    local path = stream:get_headers():get(":path") or "/"
    local key = path:match("^/item/([%w%-_.]+)$")
    if not key then return reply(stream, "404", "GET /item/<key>\n") end
    local v, err = value(key)
    if v then reply(stream, "200", v) else reply(stream, "503", tostring(err) .. "\n") end
  end,
  onerror = function(_, _, op, err)
    io.stderr:write(("http_service: %s: %s\n"):format(tostring(op), tostring(err)))
  end,
})
assert(server:listen())
local _, _, port = server:localname()
print(("listening on http://127.0.0.1:%d (guard: %s)"):format(port, GUARD))
io.stdout:flush()
assert(server:loop())
