-- A slow backend for examples/http_service.lua: a lua-http server on Lua
-- 5.4 that answers GET /<key> with "value of <key>" after a delay (20 ms),
-- and counts what a stampede guard is meant to prevent: calls of one key
-- that overlap in time, whichever service made them.
--
--   lua5.4 examples/slow_backend.lua [--port 8081] [--delay 0.02]
--
-- GET /stats answers with plain lines:
--   calls <n>                 every call so far
--   overlaps <n>              calls that began while another of their key ran
--   key <key> <service> <n>   calls per key and per calling service (the
--                             X-Service header, "-" without one)
-- It prints "listening on http://127.0.0.1:<port>" once it accepts.

-- Debian packages lua-http for Lua 5.1-5.3 only; its modules run on 5.4
if not pcall(require, "http.server") then
  package.path = package.path .. ";/usr/share/lua/5.3/?.lua;/usr/share/lua/5.3/?/init.lua"
    .. ";/usr/share/lua/5.2/?.lua;/usr/share/lua/5.2/?/init.lua"
end
local http_server = require "http.server"
local http_headers = require "http.headers"
local cqueues = require "cqueues"

local opts = { port = "8081", delay = "0.02" }
local i = 1
while arg[i] do
  local name = arg[i]:match("^%-%-(%a+)$")
  if not name or opts[name] == nil or not arg[i + 1] then
    io.stderr:write("usage: lua5.4 examples/slow_backend.lua [--port N] [--delay SECONDS]\n")
    os.exit(2)
  end
  opts[name] = arg[i + 1]
  i = i + 2
end
local delay = assert(tonumber(opts.delay), "--delay: a number of seconds")

local calls, overlaps = 0, 0
local running = {} -- key -> calls of it running now
local per = {}     -- key .. "\0" .. service -> calls

local function reply(stream, status, body)
  local h = http_headers.new()
  h:append(":status", status)
  h:append("content-type", "text/plain")
  stream:write_headers(h, false)
  stream:write_chunk(body, true)
end

local function stats()
  local out = { ("calls %d\noverlaps %d\n"):format(calls, overlaps) }
  for k, n in pairs(per) do
    local key, service = k:match("^(.*)%z(.*)$")
    out[#out + 1] = ("key %s %s %d\n"):format(key, service, n)
  end
  return table.concat(out)
end

local server = assert(http_server.listen {
  host = "127.0.0.1",
  port = assert(tonumber(opts.port), "--port: a number"),
  onstream = function(_, stream)
    local req = stream:get_headers()
    local path = req:get(":path") or "/"
    if path == "/stats" then return reply(stream, "200", stats()) end
    local key = path:match("^/([%w%-_:.]+)$")
    if not key then return reply(stream, "404", "no such key\n") end
    local service = req:get("x-service") or "-"
    calls = calls + 1
    per[key .. "\0" .. service] = (per[key .. "\0" .. service] or 0) + 1
    running[key] = (running[key] or 0) + 1
    if running[key] > 1 then overlaps = overlaps + 1 end
    cqueues.sleep(delay) -- the slow part
    running[key] = running[key] - 1
    reply(stream, "200", "value of " .. key)
  end,
  onerror = function(_, _, op, err)
    io.stderr:write(("slow_backend: %s: %s\n"):format(tostring(op), tostring(err)))
  end,
})
assert(server:listen())
local _, _, port = server:localname()
print(("listening on http://127.0.0.1:%d"):format(port))
io.stdout:flush()
assert(server:loop())
