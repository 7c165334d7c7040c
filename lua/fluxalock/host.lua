-- fluxalock.host: the event-loop host adapters.
--
-- The C core does all its network waiting in one place: when a pool has a
-- host wait function it calls
--
--     wait(fd, events, seconds)      -- events: "r" or "w"
--
-- and that function may yield the running coroutine; it returns once the
-- descriptor is ready or the time is up (either is fine: the core checks the
-- socket and its own deadline again).  A backoff pause of a waiting obtain is
-- a BLPOP on a socket, so it is such a wait too.  An error raised by wait()
-- ends the request with nil, "fluxalock: <op> <where>: host wait: <msg>".
--
-- Outside a yieldable coroutine the adapters raise (so the call returns
-- nil, "... host wait: cannot wait outside a ... coroutine under host '...'")
-- instead of quietly blocking the whole loop.
--
--   resolve("cqueues")          wait through cqueues.poll (inside a cqueue)
--   resolve("luv")              wait with uv.new_poll + uv.new_timer
--   resolve{ wait = fn }        a custom host (an embedding C program, ...)
--   resolve("blocking"|false)   nil: plain poll(2) in the C core

local type, error, pcall, require, tostring = type, error, pcall, require, tostring
local isyieldable, running, yield, resume = coroutine.isyieldable, coroutine.running,
  coroutine.yield, coroutine.resume

local M = {}

local function need(modname, host)
  local ok, mod = pcall(require, modname)
  if not ok then
    error(("host '%s' needs the Lua module '%s': %s"):format(host, modname, tostring(mod)), 0)
  end
  return mod
end

-- cqueues: a pollable object ({pollfd, events}) handed to cqueues.poll, which
-- yields to the cqueue that runs this coroutine.
local function cqueues_wait()
  local cqueues = need("cqueues", "cqueues")
  local poll, cq_running, cancel = cqueues.poll, cqueues.running, cqueues.cancel
  return function(fd, events, timeout)
    -- outside a cqueue, cqueues.poll would step a private loop: that blocks
    if not cq_running() or not isyieldable() then
      error("cannot wait outside a cqueues coroutine under host 'cqueues'", 0)
    end
    poll({ pollfd = fd, events = events }, timeout)
    -- cqueues keeps its own record of a polled descriptor; the core may
    -- close this one (reconnect) before the next wait, and a closed fd
    -- still on record makes the whole loop fail ("Bad file descriptor")
    cancel(fd)
  end
end

-- luv: a poll handle on the fd and a timer; whichever fires first resumes
-- this coroutine.  Both handles are closed before wait returns, so the core
-- may close or reuse the descriptor right after.
local function luv_wait()
  local uv = need("luv", "luv")
  local new_poll, new_timer, walk = uv.new_poll, uv.new_timer, uv.walk
  return function(fd, events, timeout)
    local co, main = running()
    if main or not isyieldable() then
      error("cannot wait outside a coroutine under host 'luv'", 0)
    end
    local poll, err = new_poll(fd)
    if not poll and tostring(err):find("EEXIST", 1, true) then
      -- libuv takes one poll handle per descriptor.  One still open on fd
      -- is stale: a wait whose coroutine was abandoned (never resumed) or
      -- whose loop stopped on an error left it, and the core reuses a
      -- descriptor number only for a new connection, never while a wait of
      -- its own is on it.  Close it and watch again
      walk(function(h)
        if not h:is_closing() and h:get_type() == "poll" and h:fileno() == fd then h:close() end
      end)
      poll, err = new_poll(fd)
    end
    if not poll then error("uv.new_poll: " .. tostring(err), 0) end
    local timer = new_timer()
    local waiting = true
    local function stop()
      if not waiting then return false end
      waiting = false
      poll:stop()
      timer:stop()
      poll:close()
      timer:close()
      return true
    end
    local function wake()
      if stop() then
        local ok, msg = resume(co)
        -- the coroutine ended with an error: raise it from the callback,
        -- as any luv program that resumes coroutines from callbacks does
        if not ok then error(debug.traceback(co, tostring(msg)), 0) end
      end
    end
    poll:start(events == "w" and "w" or "r", wake)
    -- ms resolution; one more ms so the timer never fires before 'timeout'
    timer:start(math.floor(timeout * 1000) + 1, 0, wake)
    yield()
    -- resumed by someone else (the host's own scheduler): stop watching; the
    -- core checks the socket again and calls wait again if needed
    stop()
  end
end

local adapters = { cqueues = cqueues_wait, luv = luv_wait }
local cache = {}

--- resolve(v) -> wait function, or nil for plain blocking poll(2).
--- Raises a message (no position) on an invalid v.
function M.resolve(v)
  if v == nil or v == false or v == "blocking" then return nil end
  local tv = type(v)
  if tv == "string" then
    local make = adapters[v]
    if not make then
      error(("host: unknown host '%s' (%s)"):format(v,
        [["cqueues", "luv", "blocking", false, or a table { wait = function }]]), 0)
    end
    cache[v] = cache[v] or make()
    return cache[v]
  elseif tv == "table" then
    for k in pairs(v) do
      if k ~= "wait" then
        error(("host: unknown key '%s' in the host table (only 'wait')"):format(tostring(k)), 0)
      end
    end
    if type(v.wait) ~= "function" then
      error(("host: key 'wait' must be a function wait(fd, events, timeout), got %s"):format(type(v.wait)), 0)
    end
    return v.wait
  end
  error(("host: string, false or table expected, got %s"):format(tv), 0)
end

return M
