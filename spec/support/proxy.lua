-- A small TCP proxy of our own, for fault injection between fluxalock and a
-- real redis-server, all on 127.0.0.1.
--
-- Run as a program (a separate OS process):
--   lua5.4 spec/support/proxy.lua <target-port> <mode> <watch-pid>
-- It listens on a free loopback port for clients and on a second one for
-- control, prints "listening <port> <control-port>", and forwards to
-- 127.0.0.1:<target-port> according to its mode:
--   pass        forward both ways as fast as possible
--   drop        close every connection (RST), and every new one at once
--   stall       keep connections open but forward nothing (a half-open peer)
--   deaf        accept connections and never read from them (no Redis
--               behind): a large request stays stuck mid-write
--   slow <ms>   forward each chunk only <ms> milliseconds after the last one
--   onebyte     forward one byte per send, a millisecond apart: every reply
--               reaches the client split into single bytes
--   garbage <hex> answer any request with these bytes (no Redis behind it)
--   http        answer like a web server, then close (not Redis at all)
-- Control lines (one per connection, answered "ok"): "mode <mode> [arg]",
-- "cut" (reset the open connections, keep the mode), "count" (answers the
-- number of client connections accepted so far), "rx" (answers the number of
-- bytes received from clients so far: a request is in flight).  It exits when <watch-pid>
-- (the spec process) is gone, so it never outlives its test.
--
-- Required as a module (require "support.proxy") it is the spec side:
--   local P = require "support.proxy"
--   local px = P.start(server.port, "pass")  -- px.port, px.url, px.pid
--   px:mode("stall")  px:cut()  px:count()  px:stop()

local socket = require "socket"
if ... ~= "support.proxy" then -- run as a program: support.sys is beside it
  package.path = (debug.getinfo(1, "S").source:sub(2):gsub("support/proxy%.lua$", "?.lua")) .. ";" .. package.path
end
local S = require "support.sys"
local self_pid, alive = S.self_pid, S.alive

-- ---- the spec side (module) -------------------------------------------------

if ... == "support.proxy" then
  local P = {}
  local Proxy = {}
  Proxy.__index = Proxy

  local q = S.quote
  local function sh(cmd) return (S.sh(cmd)) end

  local function here()
    local src = debug.getinfo(1, "S").source:sub(2)
    return src
  end

  function P.start(target_port, mode, arg)
    local Tmp = require "support.tmp"
    local out = Tmp.file("proxy")
    local cmd = ("exec 3>&-; lua5.4 %s %d %s %d > %s 2>&1 & echo $!"):format(
      q(here()), target_port, q(mode or "pass"), self_pid(), q(out))
    local pid = Tmp.track(tonumber(sh(cmd)))
    local px = setmetatable({ pid = pid, out = out }, Proxy)
    local deadline = socket.gettime() + 60 -- a start under valgrind beside other jobs took over 10 s
    while true do
      local h = io.open(out)
      local text = h and h:read("a") or ""
      if h then h:close() end
      local p, c = text:match("listening (%d+) (%d+)")
      if p then
        px.port, px.control = tonumber(p), tonumber(c)
        break
      end
      if socket.gettime() > deadline or not alive(pid) then
        error("proxy did not start: " .. text)
      end
      socket.sleep(0.01)
    end
    px.url = ("redis://127.0.0.1:%d/0"):format(px.port)
    if arg or (mode and mode ~= "pass") then px:mode(mode, arg) end
    return px
  end

  -- one control line, answered by the proxy once it has acted on it
  function Proxy:send(line)
    local c = assert(socket.connect("127.0.0.1", self.control))
    c:settimeout(10)
    assert(c:send(line .. "\n"))
    local answer, err = c:receive("*l")
    c:close()
    assert(answer, "proxy control: " .. tostring(err))
    return answer
  end

  function Proxy:mode(m, arg)
    local line = "mode " .. m
    if arg then line = line .. " " .. arg end
    assert(self:send(line) == "ok")
  end

  function Proxy:cut() assert(self:send("cut") == "ok") end
  function Proxy:count() return tonumber(self:send("count")) end
  function Proxy:rx() return tonumber(self:send("rx")) end

  function Proxy:stop()
    if not self.pid then return end
    pcall(self.send, self, "quit")
    local deadline = socket.gettime() + 60 -- a start under valgrind beside other jobs took over 10 s
    while alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.01) end
    if alive(self.pid) then os.execute("kill -KILL " .. self.pid .. " 2>/dev/null") end
    os.remove(self.out)
    self.pid = nil
  end

  return P
end

-- ---- the proxy (program) ----------------------------------------------------

local target = assert(tonumber(arg[1]), "usage: proxy.lua <target-port> <mode> <watch-pid>")
local mode = arg[2] or "pass"
local watch = tonumber(arg[3])
local marg -- argument of the mode: ms (slow) or bytes (garbage)

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

local reset_all
local function setmode(m, a)
  -- garbage and http connections have no Redis behind them: a change to or
  -- from those modes resets the open connections
  local fake = { garbage = true, http = true, deaf = true }
  if reset_all and (fake[m] or fake[mode]) then reset_all() end
  mode = m
  marg = a
  if m == "slow" then marg = (tonumber(a) or 50) / 1000 end
  if m == "garbage" then marg = unhex(a or "") end
end
setmode(mode, arg[4])

local listener = assert(socket.bind("127.0.0.1", 0))
local control = assert(socket.bind("127.0.0.1", 0))
listener:settimeout(0)
control:settimeout(0)
io.stdout:write(("listening %d %d\n"):format(select(2, listener:getsockname()),
  select(2, control:getsockname())))
io.stdout:flush()

-- a pair: client socket c, upstream socket u (nil when nothing is behind),
-- and what is queued for each direction
local pairs_ = {}
local accepted, received = 0, 0

local function close_pair(p, reset)
  for _, s in ipairs { p.c, p.u } do
    if reset then s:setoption("linger", { on = true, timeout = 0 }) end
    s:close()
  end
  p.closed = true
end

function reset_all()
  for _, p in ipairs(pairs_) do if not p.closed then close_pair(p, true) end end
  pairs_ = {}
end

local function on_accept(c)
  accepted = accepted + 1
  c:settimeout(0)
  c:setoption("tcp-nodelay", true)
  if mode == "drop" then
    c:setoption("linger", { on = true, timeout = 0 })
    c:close()
    return
  end
  local p = { c = c, toc = "", tou = "", next = 0 }
  if mode ~= "garbage" and mode ~= "http" and mode ~= "deaf" then
    local u = socket.tcp()
    u:settimeout(2)
    if not u:connect("127.0.0.1", target) then
      c:close()
      return
    end
    u:settimeout(0)
    u:setoption("tcp-nodelay", true)
    p.u = u
  end
  pairs_[#pairs_ + 1] = p
end

local function on_control(c)
  c:settimeout(2)
  local line = c:receive("*l") or ""
  local cmd, a1, a2 = line:match("^(%S+)%s*(%S*)%s*(%S*)")
  local answer = "ok"
  if cmd == "mode" then
    setmode(a1, a2 ~= "" and a2 or nil)
    if a1 == "drop" then reset_all() end
  elseif cmd == "cut" then
    reset_all()
  elseif cmd == "count" then
    answer = tostring(accepted)
  elseif cmd == "rx" then
    answer = tostring(received)
  elseif cmd == "quit" then
    c:send("ok\n")
    c:close()
    reset_all()
    os.exit(0)
  else
    answer = "unknown command"
  end
  c:send(answer .. "\n")
  c:close()
end

-- receive what is there (non-blocking); nil when the peer closed
local function drain(s)
  local data, err, partial = s:receive(65536)
  if data then return data end
  if err == "timeout" then return partial or "" end
  return nil, partial
end

-- send up to n bytes of q over s; returns what is left, or nil on error
local function push(s, q, n)
  if q == "" then return q end
  local chunk = n and q:sub(1, n) or q
  local sent, err, last = s:send(chunk)
  if not sent then
    if err ~= "timeout" then return nil end
    sent = last or 0
  end
  return q:sub(sent + 1)
end

local last_watch = 0
while true do
  local now = socket.gettime()
  if watch and now - last_watch > 0.5 then
    last_watch = now
    if not alive(watch) then reset_all() os.exit(0) end
  end
  local rd, wr = { listener, control }, {}
  local busy = false
  for _, p in ipairs(pairs_) do
    if mode ~= "deaf" then rd[#rd + 1] = p.c end
    if p.u then rd[#rd + 1] = p.u end
    if p.toc ~= "" or p.tou ~= "" then busy = true end
  end
  local timeout = busy and 0.001 or 0.05
  local ready = socket.select(rd, wr, timeout)
  for _, s in ipairs(ready) do
    if s == listener then
      local c = listener:accept()
      if c then on_accept(c) end
    elseif s == control then
      local c = control:accept()
      if c then on_control(c) end
    end
  end
  now = socket.gettime()
  local keep = {}
  for _, p in ipairs(pairs_) do
    local ok = true
    local data, partial = "", nil
    if mode ~= "deaf" then data, partial = drain(p.c) end
    if data == nil then
      p.tou = p.tou .. (partial or "")
      ok = false -- client gone: close both sides
    elseif data ~= "" then
      received = received + #data
      if mode == "http" then
        p.toc = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        p.closing = true
      elseif mode == "garbage" then
        p.toc = p.toc .. marg
      else
        p.tou = p.tou .. data
      end
    end
    if ok and p.u then
      local d2 = drain(p.u)
      if d2 == nil then ok = false else p.toc = p.toc .. d2 end
    end
    if ok and mode ~= "stall" and now >= p.next then
      local n
      if mode == "onebyte" then n = 1 end
      local before = #p.toc + #p.tou
      p.toc = push(p.c, p.toc, n)
      if p.toc and p.u then p.tou = push(p.u, p.tou, n) end
      if not p.toc or not p.tou then ok = false
      elseif #p.toc + #p.tou ~= before then
        if mode == "onebyte" then p.next = now + 0.001 end
        if mode == "slow" then p.next = now + marg end
      end
      if ok and p.closing and p.toc == "" then ok = false end
    end
    if ok then keep[#keep + 1] = p else close_pair(p, false) end
  end
  pairs_ = keep
end
