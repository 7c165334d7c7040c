-- fluxalock.host: the event-loop host adapters.
--
-- A host is a table of functions the C core and the Lua layer call from
-- inside a request's coroutine (docs/hosts.md):
--
--     wait(fd, events, seconds [, key])  -- events: "r" or "w"; required;
--                                -- with a key, unpark(key) may end it early
--     park(key, seconds)         -- sleep until unpark(key) or the time is up
--     unpark(key)                -- wake the coroutine parked on key, if any;
--                                -- never resumes it from inside the caller
--
-- wait may yield the running coroutine; it returns once the descriptor is
-- ready or the time is up (either is fine: the core checks the socket and
-- its own deadline again), and returning early is allowed.  park likewise.
-- With park and unpark, the coroutines of a pool share its few connections:
-- one coroutine per connection waits on the socket and unparks the others
-- when their replies are in, and waiting obtains queue per key and are
-- handed the lock by the release.  A host that gives only wait still works:
-- every coroutine then waits on the shared socket itself, and a waiting
-- obtain sleeps its backoff steps.  An error raised by wait or park ends
-- the request with nil, "fluxalock: <op> <where>: host wait: <msg>".
--
-- The two adapters also watch fluxalock.lost_fd() for the Lua layer (not
-- part of the host interface; a custom host's program watches it itself):
--
--     _watch(fd, tick)   call tick() when fd is readable, and every second;
--                        stop once tick() returns false.  Returns a function
--                        that makes the watch call tick() soon (or false:
--                        no loop to watch from here)
--     _spawn(fn)         run fn in a coroutine of its own; false if it cannot
--
-- Outside a yieldable coroutine the adapters raise (so the call returns
-- nil, "... host wait: cannot wait outside a ... coroutine under host '...'")
-- instead of quietly blocking the whole loop.
--
--   resolve("cqueues")          cqueues.poll and condition variables (inside a cqueue)
--   resolve("luv")              uv poll handles and timers, resumes from callbacks
--   resolve{ wait = fn [, park = fn, unpark = fn] }   a custom host
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
-- yields to the cqueue that runs this coroutine; a parked coroutine waits on
-- a condition variable of its own.
local function cqueues_host()
  local cqueues = need("cqueues", "cqueues")
  local condition = need("cqueues.condition", "cqueues")
  local poll, cq_running, cancel = cqueues.poll, cqueues.running, cqueues.cancel
  local parked = {} -- key -> condition variable
  local function inside()
    -- outside a cqueue, cqueues.poll would step a private loop: that blocks
    if not cq_running() or not isyieldable() then
      error("cannot wait outside a cqueues coroutine under host 'cqueues'", 0)
    end
  end
  local h = {}
  function h.wait(fd, events, timeout, key)
    inside()
    if key ~= nil then -- unpark(key) ends this wait too
      local cv = condition.new()
      parked[key] = cv
      poll({ pollfd = fd, events = events }, cv, timeout)
      if parked[key] == cv then parked[key] = nil end
    else
      poll({ pollfd = fd, events = events }, timeout)
    end
    -- cqueues keeps its own record of a polled descriptor; the core may
    -- close this one (reconnect) before the next wait, and a closed fd
    -- still on record makes the whole loop fail ("Bad file descriptor")
    cancel(fd)
  end
  function h.park(key, timeout)
    inside()
    local cv = condition.new()
    parked[key] = cv
    cv:wait(timeout)
    if parked[key] == cv then parked[key] = nil end
  end
  function h.unpark(key)
    local cv = parked[key]
    if cv then
      parked[key] = nil
      cv:signal() -- the waiter runs at the cqueue's next step, not in here
    end
  end
  -- a coroutine of the cqueue that runs the caller: the watch keeps that
  -- loop running only while tick() says there is a lock to watch
  function h._watch(fd, tick)
    local cq = cq_running()
    if not cq then return false end
    local cv = condition.new()
    cq:wrap(function()
      repeat poll({ pollfd = fd, events = "r" }, cv, 1) until not tick()
    end)
    return function() cv:signal() end
  end
  function h._spawn(fn)
    local cq = cq_running()
    if not cq then return false end
    cq:wrap(fn)
    return true
  end
  return h
end

-- luv: a poll handle on the fd and a timer; whichever fires first resumes
-- this coroutine.  Both handles are closed before wait returns, so the core
-- may close or reuse the descriptor right after.  Parked coroutines share
-- one timer (a timer of its own, its callback and their upvalues cost each
-- of thousands of parked coroutines several hundred bytes).
local function luv_host()
  local uv = need("luv", "luv")
  local new_poll, new_timer, walk, uv_now, update_time, status = uv.new_poll, uv.new_timer, uv.walk,
    uv.now, uv.update_time, coroutine.status
  local function resume_or_raise(co)
    local ok, msg = resume(co)
    -- the coroutine ended with an error: raise it from the callback,
    -- as any luv program that resumes coroutines from callbacks does
    if not ok then error(debug.traceback(co, tostring(msg)), 0) end
  end
  local function inside()
    local _, main = running()
    if main or not isyieldable() then
      error("cannot wait outside a coroutine under host 'luv'", 0)
    end
  end
  -- key -> the wake-up of the coroutine parked (or waiting) on it; unpark
  -- hands it to one 0 ms timer that runs the wake-ups at the loop's next
  -- turn (a resume from inside the unparking coroutine would nest, and
  -- chains of them would overflow the C stack)
  -- (a parked coroutine itself: it is resumed if it is still parked then)
  local parked, ready, kick = {}, {}, nil
  local polls = {} -- fd -> the poll handle a wait of ours opened on it
  local at -- below: coroutine -> its place in the heap of parked ones
  -- { finish } as a to-be-closed value: finish() runs when the wait
  -- returns, and also when its coroutine is closed in it (coroutine.close):
  -- then its handles close at once, not when they fire (a poll handle left
  -- on a socket would refuse the next wait on it; a timer would keep the
  -- loop running for the closed coroutine's whole timeout)
  local finally = { __close = function(t) t[1]() end }
  local function later(fn)
    ready[#ready + 1] = fn
    if not kick then kick = new_timer() end
    if #ready == 1 then
      kick:start(0, 0, function()
        local list = ready
        ready = {}
        for i = 1, #list do
          local f = list[i]
          if type(f) ~= "thread" then f()
          elseif at[f] and status(f) == "suspended" then resume_or_raise(f) end
        end
      end)
    end
  end
  -- the parked coroutines by due time (loop time, ms): a binary heap in
  -- two arrays, the shared timer armed for its top
  local due, who, keys, n, ptimer, armed = {}, {}, {}, 0, nil, nil
  at = {}
  local function swap(i, j)
    due[i], due[j], who[i], who[j] = due[j], due[i], who[j], who[i]
    keys[i], keys[j] = keys[j], keys[i]
    at[who[i]], at[who[j]] = i, j
  end
  local function up(i)
    while i > 1 and due[i // 2] > due[i] do
      swap(i, i // 2)
      i = i // 2
    end
  end
  local function down(i)
    while true do
      local l, m = 2 * i, i
      if l <= n and due[l] < due[m] then m = l end
      if l + 1 <= n and due[l + 1] < due[m] then m = l + 1 end
      if m == i then return end
      swap(i, m)
      i = m
    end
  end
  local function remove(i)
    at[who[i]] = nil
    if i < n then
      due[i], who[i], keys[i] = due[n], who[n], keys[n]
      at[who[i]] = i
    end
    due[n], who[n], keys[n] = nil, nil, nil
    n = n - 1
    if i <= n then
      local moved = who[i]
      up(i)
      down(at[moved])
    end
  end
  local fire
  -- the timer runs for the earliest due time, and only while one is parked
  -- (an armed timer keeps the loop running)
  local function arm()
    if n == 0 then
      if armed then ptimer:stop() end
      armed = nil
    elseif armed ~= due[1] then
      armed = due[1]
      ptimer:start(math.max(0, armed - uv_now()), 0, fire)
    end
  end
  function fire()
    armed = nil
    local t = uv_now()
    while n > 0 and due[1] <= t do
      local co = who[1]
      remove(1)
      arm() -- for the others first: a resume may raise
      if status(co) == "suspended" then resume_or_raise(co) end
    end
    arm()
  end
  local h = {}
  function h.wait(fd, events, timeout, key)
    inside()
    local co = running()
    -- a poll handle of ours still open on fd is stale (see below): closed
    -- first, so that new_poll does not fail (luv 1.44 loses the memory of
    -- a handle whose new_poll failed)
    local old = polls[fd]
    if old and not old:is_closing() then
      old:stop()
      old:close()
    end
    local poll, err = new_poll(fd)
    if not poll and tostring(err):find("EEXIST", 1, true) then
      -- libuv takes one poll handle per descriptor.  One still open on fd
      -- is stale: a wait whose coroutine was abandoned (never resumed) or
      -- whose loop stopped on an error left it, and the core lets one
      -- coroutine at a time wait on a socket.  Close it and watch again
      walk(function(hd)
        if not hd:is_closing() and hd:get_type() == "poll" and hd:fileno() == fd then hd:close() end
      end)
      poll, err = new_poll(fd)
    end
    if not poll then error("uv.new_poll: " .. tostring(err), 0) end
    polls[fd] = poll
    local timer = new_timer()
    local waiting = true
    local wake
    local function stop()
      if not waiting then return false end
      waiting = false
      if key ~= nil and parked[key] == wake then parked[key] = nil end
      if polls[fd] == poll then polls[fd] = nil end
      -- another wait on the same fd may have closed this handle (libuv
      -- takes one per descriptor; see above): stopping it then aborts
      if not poll:is_closing() then
        poll:stop()
        poll:close()
      end
      timer:stop()
      timer:close()
      return true
    end
    function wake()
      -- a coroutine closed meanwhile (coroutine.close) is not resumed, nor
      -- the running one (finish: resumed by someone else, or being closed)
      if stop() and coroutine.status(co) == "suspended" then resume_or_raise(co) end
    end
    poll:start(events == "w" and "w" or "r", wake)
    -- ms resolution; one more ms so the timer never fires before 'timeout'
    timer:start(math.floor(timeout * 1000) + 1, 0, wake)
    if key ~= nil then parked[key] = wake end -- unpark(key) ends this wait too
    -- resumed by someone else (the host's own scheduler) or closed: stop
    -- watching; the core checks the socket again and waits again if needed
    local _ <close> = setmetatable({ wake }, finally)
    yield()
  end
  -- the end of a park, when it returns and also when its coroutine is
  -- closed in it (coroutine.close runs its to-be-closed values in it): out
  -- of the heap and the map at once, so no timer runs on for a closed one.
  -- One shared value: a park makes nothing of its own
  local park_end = setmetatable({}, { __close = function()
    local co = running()
    local i = at[co]
    if i then -- resumed before its time (unpark, someone else), or closed
      if parked[keys[i]] == co then parked[keys[i]] = nil end
      remove(i)
      arm()
    end
  end })
  function h.park(key, timeout)
    -- inside(), without its call: a call deeper than the wait's own leaves
    -- each parked coroutine one more call record
    local co, main = running()
    if main or not isyieldable() then
      error("cannot wait outside a coroutine under host 'luv'", 0)
    end
    if not ptimer then ptimer = new_timer() end
    parked[key] = co
    n = n + 1
    -- ms resolution; one more ms so that it never ends before 'timeout'
    -- (from now: the loop's time is that of its last turn)
    update_time()
    due[n], who[n], keys[n] = uv_now() + math.floor(timeout * 1000) + 1, co, key
    at[co] = n
    up(n)
    arm()
    local _ <close> = park_end
    yield()
    if parked[key] == co then parked[key] = nil end -- its time came
  end
  function h.unpark(key)
    local wake = parked[key]
    if not wake then return end
    parked[key] = nil
    later(wake)
  end
  -- a poll handle and a timer, both unreferenced: they never keep the
  -- loop running by themselves.  Closed once there is nothing to watch, so
  -- that nothing of fluxalock's stays in the loop (uv.walk shows none)
  local lost_poll, lost_timer, lost_tick
  local function check()
    if lost_tick and not lost_tick() then
      lost_tick = nil
      if lost_poll then lost_poll:close() end
      lost_timer:close()
      lost_poll, lost_timer = nil, nil
    end
  end
  function h._watch(fd, tick)
    if not lost_timer then
      -- a poll handle on fd already (the watcher of a fluxalock loaded
      -- once more in this state, a reload): libuv takes one per
      -- descriptor, and luv 1.44 loses the memory of a uv.new_poll that
      -- fails.  Then the timer alone calls tick(), often enough for
      -- on_lost's 50 ms
      local taken = false
      walk(function(hd)
        if hd:get_type() == "poll" and not hd:is_closing() and hd:fileno() == fd then taken = true end
      end)
      lost_poll = not taken and new_poll(fd) or nil
      lost_timer = new_timer()
      if lost_poll then lost_poll:unref() end
      lost_timer:unref()
    end
    lost_tick = tick
    if lost_poll then lost_poll:start("r", check) end
    local every = lost_poll and 1000 or 20
    lost_timer:start(every, every, check)
    return function() end -- tick() every second is soon enough: nothing waits for it
  end
  function h._spawn(fn)
    local co = coroutine.create(fn)
    later(function() resume_or_raise(co) end) -- at the loop's next turn
    return true
  end
  return h
end

local adapters = { cqueues = cqueues_host, luv = luv_host }
local cache = {}

--- resolve(v) -> host table (wait [, park, unpark]), or nil for plain blocking poll(2).
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
      if k ~= "wait" and k ~= "park" and k ~= "unpark" then
        error(("host: unknown key '%s' in the host table (only 'wait', 'park', 'unpark')"):format(tostring(k)), 0)
      end
    end
    if type(v.wait) ~= "function" then
      error(("host: key 'wait' must be a function wait(fd, events, timeout), got %s"):format(type(v.wait)), 0)
    end
    for _, k in ipairs { "park", "unpark" } do
      if v[k] ~= nil and type(v[k]) ~= "function" then
        error(("host: key '%s' must be a function, got %s"):format(k, type(v[k])), 0)
      end
    end
    if (v.park == nil) ~= (v.unpark == nil) then
      error("host: keys 'park' and 'unpark' go together", 0)
    end
    return { wait = v.wait, park = v.park, unpark = v.unpark }
  end
  error(("host: string, false or table expected, got %s"):format(tv), 0)
end

return M
