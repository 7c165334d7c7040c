-- fluxalock: a distributed lock for Lua 5.4, backed by Redis.
--
--   local fluxalock = require "fluxalock"
--   local lock <close>, err = fluxalock.locker():obtain("nightly-report", 60, 5)
--   if not lock then print(err) return end
--
-- This layer holds configuration, pools, validation and the waiting policy;
-- the C core (fluxalock.core) speaks to Redis.  See docs/api.md for the API.

local core = require "fluxalock.core"
local config = require "fluxalock.config"
local modes = require "fluxalock.modes"

local type, error, getmetatable, setmetatable = type, error, getmetatable, setmetatable
local min, now, random = math.min, core.now, math.random

local M = {
  NOT_OBTAINED = "not obtained",
  DEFAULT_POOL = "default",
  _VERSION = "fluxalock " .. core.version,
  -- the third value of every runtime failure (nil, message, code), and a
  -- log event's 'code': each name maps to itself, so a misspelt
  -- fluxalock.codes.timout is nil, not a silent mismatch (docs/errors.md)
  codes = {},
}
for _, c in ipairs { "not_obtained", "connect", "timeout", "io", "auth", "tls", "server",
                     "replicas", "quorum", "limit", "lost" } do M.codes[c] = c end
local NOT_OBTAINED = M.NOT_OBTAINED

local specs = {}            -- name -> the pool as given to configure (a copy)
local pools = {}            -- name -> normalized options (configured)
local defaults = nil        -- configure{defaults = ...}
local lockers = {}          -- name -> Locker of a configured pool
local by_url = setmetatable({}, { __mode = "v" }) -- URL -> Locker
local host_wait = nil       -- the event-loop host (a table: wait [, park, unpark]), or nil
local log_fn = nil          -- configure{log = fn}
local all = setmetatable({}, { __mode = "k" }) -- every Locker (the log follows configure)
-- FLUXALOCK_DEBUG (read once, at require): every event also goes to stderr
local DEBUG = os.getenv("FLUXALOCK_DEBUG")
DEBUG = DEBUG ~= nil and DEBUG ~= "" and DEBUG ~= "0"

-- ---- argument checks: misuse raises, naming the argument --------------------

local function argerror(n, fname, msg, level)
  -- level 3: the caller of the API function that called us (4 from a
  -- helper of that function), so the message points at the user's line
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 3)
end

-- seconds -> whole milliseconds (>= 1), or raise naming argument n
local function duration(v, n, fname, what)
  if type(v) ~= "number" then
    argerror(n, fname, ("%s must be a number of seconds, got %s"):format(what, type(v)), 4)
  end
  if v ~= v then argerror(n, fname, what .. " must not be NaN", 4) end
  if v < 0.001 then argerror(n, fname, what .. " must be at least 0.001 seconds", 4) end
  if v > 1e9 then argerror(n, fname, what .. " must not exceed 1e9 seconds", 4) end
  return (v * 1000 + 0.5) // 1
end

-- obtain's 4th argument -> the renewal interval in ms, or nil (no
-- renewal), and the on_lost function, if any
local function renew_interval(opts, ttl, ms)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    argerror(4, "obtain", "options must be a table, got " .. type(opts), 4)
  end
  for k in pairs(opts) do
    if k ~= "renew" and k ~= "on_lost" and not modes.OPTS[k] then
      argerror(4, "obtain", ("unknown option '%s'"):format(tostring(k)), 4)
    end
  end
  local r, on_lost = opts.renew, opts.on_lost
  if on_lost ~= nil and type(on_lost) ~= "function" then
    argerror(4, "obtain", "option 'on_lost' must be a function, got " .. type(on_lost), 4)
  end
  if r == nil or r == false then
    if on_lost ~= nil then argerror(4, "obtain", "option 'on_lost' needs option 'renew'", 4) end
    return nil
  end
  if r == true then return ms // 3 > 0 and ms // 3 or 1, on_lost end
  if type(r) ~= "number" then
    argerror(4, "obtain", "option 'renew' must be a boolean or a number of seconds, got " .. type(r), 4)
  end
  if r ~= r then argerror(4, "obtain", "renew interval must not be NaN", 4) end
  if r < 0 then argerror(4, "obtain", "renew interval must not be negative", 4) end
  if r < 0.001 then argerror(4, "obtain", "renew interval must be at least 0.001 seconds", 4) end
  -- held() ends at ttl minus a margin after the last renewal: above ttl/2
  -- a failed renewal would leave no time to try again before it
  local every = (r * 1000 + 0.5) // 1
  if r > ttl / 2 or every > ms // 2 then
    argerror(4, "obtain", "option 'renew' must be at most half the ttl", 4)
  end
  return every, on_lost
end

-- ---- lost leases, told (API.md; csrc/lost.c) ---------------------------------
--
-- A renewed lock obtained with opts.on_lost is kept here with its function
-- (weakly: a lock dropped by the program is nobody's to tell).  When the
-- renewal thread finds a lock lost it bumps core.lost_seq() and writes a
-- byte to lost_fd(); dispatch then calls the function of each lock whose
-- renewal is lost, once.  Who dispatches: under the cqueues and luv
-- adapters a watcher of the fd (lua/fluxalock/host.lua), each function in a
-- coroutine of its own; in a plain script every locker and lock method
-- first (core.setdispatch: the lock methods are C); always fluxalock.dispatch().

local told = setmetatable({}, { __mode = "k" }) -- renewed lock -> its on_lost function
local ntold, sweep_at = 0, 64 -- entries added since the last sweep; when to sweep
local seen = 0                -- core.lost_seq() at the last look
local dispatching = false
local lostfd                  -- core.renewal_fd(), once asked
local kick                    -- ends the adapter's watch early (cqueues), or nil
local watching = nil          -- the host whose adapter watches the fd

local function lost_fd()
  lostfd = lostfd or core.renewal_fd()
  return lostfd
end

-- an on_lost function, called; its error is reported on stderr, not raised
-- into whatever call happened to run it
local function call(fn, lock)
  local ok, err = pcall(fn, lock)
  if not ok then
    io.stderr:write(("fluxalock: an on_lost function raised an error: %s\n"):format(tostring(err)))
  end
end

-- drop the locks whose renewal stopped (released, collected): they will
-- never be told; -> whether any lock is left to tell
local function sweep()
  ntold = 0
  for lock in pairs(told) do
    if core.renewal_state(lock) == "stopped" then told[lock] = nil else ntold = ntold + 1 end
  end
  sweep_at = math.max(64, 2 * ntold)
  return next(told) ~= nil
end

-- run(fn, lock) for each lock found lost since the last look; -> how many
local function tell(run)
  if lostfd then core.lost_drain(lostfd) end -- first: a loss after it leaves a byte
  local s = core.lost_seq()
  if s == seen or dispatching then return 0 end
  seen = s
  local due = {}
  for lock, fn in pairs(told) do
    if core.renewal_state(lock) == "lost" then
      told[lock] = nil
      due[#due + 1] = lock
      due[#due + 1] = fn
    end
  end
  dispatching = true -- a function that calls a method: no second round inside
  for i = 1, #due, 2 do run(due[i + 1], due[i]) end
  dispatching = false
  return #due // 2
end

-- the plain script's dispatch, which every locker and lock method calls
local function plain_tell()
  if core.lost_seq() ~= seen then
    tell(call)
    if next(told) == nil then core.setdispatch(nil) end
  end
end

-- fn(lock) in a coroutine of its own when the host adapter can start one
-- here, else in this call
local function spawned(fn, lock)
  local h = host_wait
  if not (h and h._spawn and h._spawn(function() call(fn, lock) end)) then call(fn, lock) end
end

-- under a host adapter: its watcher calls this when the fd is readable
-- (and now and then); -> false once there is nothing left to watch
local function watched()
  if watching ~= host_wait then watching = nil return false end
  tell(spawned)
  if not sweep() then
    watching, kick = nil, nil
    return false
  end
  return true
end

-- who tells the locks now (after an on_lost lock, or a host change)
local function arrange_telling()
  if next(told) == nil then return end
  if not host_wait then
    core.setdispatch(plain_tell)
    return
  end
  core.setdispatch(nil)
  if watching ~= host_wait and host_wait._watch then
    watching = host_wait
    kick = host_wait._watch(lost_fd(), watched)
    if kick == false then watching = nil end -- no loop to watch from here
  end
end

local function tell_me(lock, fn)
  told[lock] = fn
  ntold = ntold + 1
  if ntold >= sweep_at then sweep() end
  arrange_telling()
end

--- fluxalock.lost_fd() -> a descriptor readable whenever a renewed lock of
--- this process is found lost (then call fluxalock.dispatch())
function M.lost_fd() return lost_fd() end

--- fluxalock.dispatch() -> how many on_lost functions ran; it also drains
--- lost_fd().  Under a host adapter they run in coroutines of their own
function M.dispatch() return tell(spawned) end

-- a fresh lock handed to the renewal thread (csrc/renew.c); if that fails
-- the lock is released: a caller that asked for renewal never gets a lock
-- that silently expires.  A lock whose lease ran out before the renewal
-- could start (its obtain's answer came too late) is lost already
local LOST = "fluxalock: renew: the lock was lost before its renewal started"
local function renewed(lock, ms, every, sent, on_lost)
  local ok, err
  if now() - sent >= (ms - ms / 100 - 2) / 1000 then -- renew.c's deadline
    ok = false
  else -- (a Sentinel pool's sentinels go with it: the thread asks them itself)
    ok, err = core.renew(lock, ms, every, sent)
  end
  if ok then
    if on_lost then tell_me(lock, on_lost) end
    return lock
  end
  lock:release()
  if err then return nil, err, "io" end -- no memory, pipe or thread for it
  return nil, LOST, "lost"
end

-- ---- Locker ------------------------------------------------------------------

local Locker = { __name = "fluxalock.Locker" }
Locker.__index = Locker

-- the engine of a pool: a core Pool (one server, a Redlock group, a
-- cluster) or, for Sentinel, a Lua object with the same methods
-- TLS settings (config.lua) become core TLS objects: the CA, certificate
-- and key files are loaded once per pool, here, and shared by its
-- connections (sentinels, cluster nodes and the renewal thread's too)
local function tls_object(name, t)
  local obj, err, key = core.tls(t)
  if not obj then
    key = key == "tls" and "tls" or "tls." .. key
    error(("fluxalock: pool '%s': option '%s' %s"):format(name, key, err), 0)
  end
  return obj
end

local function with_tls(name, o)
  if not o.tls and not o.nodes then return o end
  local c = {}
  for k, v in pairs(o) do c[k] = v end
  if o.tls then c.tls = tls_object(name, o.tls) end
  if o.nodes then
    c.nodes = {}
    for i, n in ipairs(o.nodes) do c.nodes[i] = with_tls(name, n) end
  end
  return c
end

local function new_pool(name, o)
  o = with_tls(name, o)
  if o.kind == "sentinels" then return require("fluxalock.sentinel").pool(o) end
  if o.kind == "redlock" then return require("fluxalock.redlock").pool(o) end
  if o.kind == "cluster" then return require("fluxalock.cluster").pool(o) end
  return core.pool(o)
end

-- ---- the debug log -------------------------------------------------------------

local stderr = io.stderr
local reported = setmetatable({}, { __mode = "k" }) -- log functions that raised

-- bytes a terminal would not show as themselves, as \xNN
local function printable(s)
  return (s:gsub('[%c\128-\255\\"]', function(c) return ("\\x%02x"):format(c:byte()) end))
end

-- one line of FLUXALOCK_DEBUG, e.g.
--   fluxalock: default obtain "nightly" 0.412 ms -> obtained (127.0.0.1:6379)
local function debug_line(ev)
  local what = ev.key and ('"' .. printable(ev.key) .. '"') or printable(ev.command or "")
  local result = ev.ok and (ev.outcome or "ok") .. " (" .. ev.where .. ")"
    or ("failed [%s]: %s"):format(tostring(ev.code), printable((tostring(ev.error):gsub("^fluxalock: ", ""))))
  return ("fluxalock: %s %s %s %.3f ms -> %s\n"):format(printable(ev.pool), ev.op, what,
    ev.seconds * 1000, result)
end

-- the function the C core calls with each event of a locker's pool: names
-- the pool, writes the FLUXALOCK_DEBUG line, calls the user's function (a
-- raise in it is reported once per function on stderr, then dropped); nil
-- when there is nothing to do, so the core's log branch stays off
local function logger(name, user)
  if not user and not DEBUG then return nil end
  return function(ev)
    ev.pool = name
    if DEBUG then stderr:write(debug_line(ev)) end
    if user then
      local ok, err = pcall(user, ev)
      if not ok and not reported[user] then
        reported[user] = true
        stderr:write(("fluxalock: the log function raised an error (reported once): %s\n"):format(tostring(err)))
      end
    end
  end
end

-- the pool's own 'log' option wins over configure{log = ...}
local function apply_log(l)
  local user = l._log
  if user == nil then user = log_fn end
  l._pool:setlog(logger(l.name, user or nil))
end

local function new_locker(name, o)
  local pool = new_pool(name, o)
  if host_wait then pool:sethost(host_wait) end
  local l = setmetatable({
    name = name,
    _pool = pool,
    _where = config.where(o),
    _step = o.retry_step,
    _prefix = o.prefix or "",
    _max = o.retry_max,
    _log = o.log,
    -- what the Lua layer counts (stats(); the C core counts the rest)
    _obtained = 0, _not_obtained = 0, _errors = 0,
    _waited = 0, _wait_seconds = 0.0, _wait_max = 0.0, _waiting = 0,
  }, Locker)
  all[l] = true
  if log_fn or DEBUG or o.log then apply_log(l) end
  return l
end

function Locker.__tostring(self)
  return ("fluxalock.Locker: %s (%s)"):format(self.name, self._where)
end

-- Waiting: every fluxalock release pushes a wake-up that one waiter pops
-- (BLPOP) at once; the holder's value is never touched, so a release by
-- another client library wakes nobody.  Each wait is also a linear backoff
-- step (retry_step, 2*retry_step, ... up to retry_max): an expired lock, a
-- lock released by another library or a lost wake-up is noticed at the
-- latest by the next step.  No wait runs past the deadline, and a last try
-- is made at it.
-- -> lock, sent, mode | false, nil, mode (not obtained) | nil, message,
-- mode, code; 'sent' is when the successful try was sent (a renewal's first
-- deadline counts from it); 'mode' the mode it waited in
-- (fluxalock/modes.lua: a plain obtain on a key held in a mode queues as a
-- writer)
local function wait_for(self, pool, key, ms, deadline, mode)
  local step, smax, pause = self._step, self._max, 0
  if mode then smax = min(smax, modes.HEARTBEAT_STEP) end -- (its heartbeat)
  local lock, err, code, sent = false, nil, nil, nil
  while not lock do
    if lock == nil then return nil, err, mode, code end
    local left = deadline - now()
    if left <= 0 then return false, nil, mode end
    pause = min(pause + step, smax)
    if left >= 0.001 then
      -- the server times BLPOP out coarsely: 'left' is enforced client-side
      local ok, werr, wcode = pool:await(key, min(pause, left), left)
      if ok == nil then return nil, werr, mode, wcode end
    end
    sent = now()
    lock, err, code = pool:obtain(key, ms, mode)
    if err == "mode" then
      mode, smax = modes.writer(), min(smax, modes.HEARTBEAT_STEP)
      lock, err, code = pool:obtain(key, ms, mode)
    end
  end
  return lock, sent, mode
end

-- ---- waiting under a host: a local FIFO per key ------------------------------
--
-- Under a host, the waiters of one key in this process queue up (API.md:
-- first come, first served).  Only the head tries at Redis; the others are
-- parked (host.park) until they become the head.  A release in this process
-- (core.setnotify) unparks the head at once; a release in another process
-- publishes on the key's wake-up channel, which the pool's one subscription
-- (csrc/wake.c) turns into the same wake-up; an expired lock, a lock of
-- another library or a lost message is noticed by the head's backoff steps
-- (linear, jittered, capped at retry_max).  A waiting obtain holds no
-- connection.

-- the core pool whose locks a locker's pool makes (Cluster and Sentinel
-- pools are Lua objects around a core group)
local function core_of(pool)
  if type(pool) == "table" then return pool.group end
  return pool
end

-- core pool -> { [full key] = queue | coroutine, chans = { [channel] = full key } };
-- a queue is { first = i, last = j, [i] = waiter | false, cp = core pool,
-- full = full key, chan = channel }.  A coroutine in place of a queue is
-- trying a key nobody here waited for, and nobody came since: such a try
-- makes no queue, no waiter and no subscription (they are made when a
-- second caller comes, or when the try has to wait)
local queues = setmetatable({}, { __mode = "k" })
-- a coroutine whose try stood for its key's queue -> true (a release came
-- meanwhile) or its waiter, made when its key's queue was
local firsts = setmetatable({}, { __mode = "k" })
local idle_fd       -- a descriptor that never becomes ready: a wait-only host's sleep

-- park w for 'secs' (until unparked, or the time is up)
local function park(w, secs)
  local h = host_wait
  if h.park then return h.park(w, secs) end
  -- a wait-only host cannot be woken by us: sleep the step on a silent fd
  idle_fd = idle_fd or core.idlefd()
  return h.wait(idle_fd, "r", secs)
end

local function unpark(w)
  local h = host_wait
  if h and h.unpark then h.unpark(w) end
end

-- a head that stopped taking its turns: its coroutine was closed, or was
-- abandoned (never resumed) past the end of its own step; it would hold
-- the queue up for ever
local function stale(h)
  return coroutine.status(h.co) == "dead" or now() > h.alive + 1
end

local function head(q)
  while q.first <= q.last and not q[q.first] do
    q[q.first] = nil
    q.first = q.first + 1
  end
  return q[q.first]
end

-- a release of 'full' (a full key, or its wake-up channel) by a lock of
-- pool 'cp': the head of its queue tries at once; -> that head (the
-- subscription's reader, csrc/wake.c, then knows it was woken itself)
-- a plain lock of 'full' is about to be released (pool 'cp'): -> the ms
-- of the head waiter here when the release should hand the lock straight
-- to it (one script: the key is never free; llock.c hand_prepare)
local function handover(full, cp)
  local qs = queues[cp]
  local q = qs and qs[full]
  if type(q) ~= "table" then return nil end
  local w = head(q)
  if not w or not w.ms or w.grant or w.deadline <= now() or stale(w) then return nil end
  q.hand, q.hand_sent = w, now()
  return math.floor(w.ms)
end

-- a handed-over lock to its waiter, if it still waits; else released now
local function take_grant(q, grant)
  local w = q and q.hand
  if q then q.hand = nil end
  if w and q[w.at] == w and w.q == q and not w.grant then
    w.grant, w.sent = grant, q.hand_sent
    w.kicked = true
    unpark(w)
    return w
  end
  core.handback(grant)
end

local function released(full, cp, grant)
  if kick then kick() end -- an on_lost watcher looks whether it still has locks to watch
  local qs = queues[cp]
  if not qs then
    if grant then core.handback(grant) end
    return
  end
  local q = qs[full] or qs[qs.chans[full] or false]
  if grant then
    local w = take_grant(type(q) == "table" and q or nil, grant)
    if w then return w end
  end
  if type(q) == "thread" then -- its try is in flight: it tries again at once
    firsts[q] = true
    return
  end
  local w = q and head(q)
  if w then
    w.kicked = true
    unpark(w)
    if w.share then modes.kick_coheads(q, w, unpark) end
  end
  return w
end

-- the waiter behind w in q, if any
local function behind(q, w)
  for i = w.at + 1, q.last do
    if q[i] then return q[i] end
  end
end

local function leave(q, w)
  if q[w.at] ~= w then return end -- skipped as stale meanwhile: not in q
  local h = head(q)
  local front = h == w or behind(q, h) == w -- the head or the second
  q[w.at] = false
  local nxt = head(q)
  local qs = queues[q.cp]
  if nxt then
    unpark(nxt) -- its turn: it starts its own backoff steps
    -- a new second in line parked for its whole wait while it was further
    -- back: woken, it parks a second at a time, and so looks at a head
    -- that stops taking its turns (see stale)
    local snd = front and behind(q, nxt)
    if snd then unpark(snd) end
  elseif qs[q.full] == q then -- (not a newer queue of the same key)
    qs[q.full] = nil
    if q.chan then
      qs.chans[q.chan] = nil
      q.cp:unwatch(q.chan)
    end
  end
end

-- a waiter is { co = its coroutine, alive = until when it takes its turns,
-- at = its place, q = its queue [, kicked, quick, counted] }; it leaves
-- its queue once: at the end of its obtain, or when its coroutine is
-- closed (or fails) while it waits, as a to-be-closed value of the obtain.
-- counted: the locker whose stats().waiting counts it
local Waiter = {}
local function dequeue(w)
  local q = w.q
  if not q then return end
  w.q = nil
  w.ms = nil -- no hand-over to it from now on
  local grant = w.grant
  w.grant = nil
  if grant then core.handback(grant) end -- handed over, never taken
  leave(q, w)
  local locker = w.counted
  if locker then
    w.counted = nil
    locker._waiting = locker._waiting - 1
  end
end
Waiter.__close = dequeue

-- settle: a Redlock release publishes on each node as it gets there, so
-- the first node's message may come before the others released.  A head
-- woken by it whose try finds the key still held on a majority tries
-- again up to SETTLE times, 5 ms after the first and each pause twice
-- the last (5 to 160 ms, 315 ms in all; never more than retry_max): the
-- other nodes' releases come a network trip later, more with nodes at
-- other distances (two tries 5 ms apart missed a release 60 ms behind,
-- and the head waited its whole backoff step: wake_spec)
local SETTLE = 6
local function queues_of(pool)
  local cp = core_of(pool)
  local qs = queues[cp]
  if not qs then
    qs = { chans = {}, settle = cp:info().kind == "redlock" }
    queues[cp] = qs
  end
  return qs, cp
end

-- w at the tail of q
local function append(q, w)
  q.last = q.last + 1
  q[q.last] = w
  w.at = q.last
  w.q = q
end

local function waiter(co, kicked)
  return setmetatable({ co = co, alive = now() + 5, kicked = kicked }, Waiter)
end

-- the key's queue, made when a second caller comes or a try has to wait;
-- a coroutine whose try stood for the queue becomes its head
local function queue_of(pool, key, full)
  local qs, cp = queues_of(pool)
  local q = qs[full]
  if type(q) == "table" then return q end
  local first = q
  q = { first = 1, last = 0, cp = cp, full = full }
  -- under a parking host the pool subscribes to the key's wake-up
  -- channel while the key has waiters here (a group, on its first node)
  if host_wait.park then
    q.chan = cp:watch(key)
    qs.chans[q.chan] = full
  end
  qs[full] = q
  if first then
    -- its try is in flight: it takes its waiter back when the try is over
    local w = waiter(first, firsts[first] == true)
    append(q, w)
    firsts[first] = w
  end
  return q
end

-- the waiter right behind the head: it watches for a stale head
local function second(q, w)
  for i = q.first + 1, q.last do
    if q[i] then return q[i] == w end
  end
  return false
end

-- a place in the key's local queue, taken before the first try: a caller
-- that came later must not try (and win) while this one's try is in flight
local function enqueue(pool, key, full)
  local q = queue_of(pool, key, full)
  local w = waiter(coroutine.running(), nil)
  append(q, w)
  return q, w
end

-- after the first try at a key nobody here waited for (the key's queue
-- stood for the try's coroutine meanwhile: queues, above) -> as
-- pool:obtain, and the key's queue and this caller's waiter when it waits
local function first_tried(pool, key, full, qs, lock, err)
  local co = coroutine.running()
  local w = firsts[co]
  firsts[co] = nil
  if qs[full] == co then -- nobody came: no queue
    qs[full] = nil
    if lock ~= false then return lock, err end
    local q = queue_of(pool, key, full)
    w = waiter(co, w == true)
    append(q, w)
    return lock, err, q, w
  end
  -- a caller that came made the queue, with this one's waiter at its head
  -- (skipped meanwhile if the try took long: it goes to the tail again)
  if lock ~= false then
    dequeue(w)
    return lock, err
  end
  return lock, err, w.q, w
end

-- the local queue's way of waiting (its first try made); -> as wait_for
local function wait_queued(self, pool, key, ms, deadline, q, w, mode)
  self._waiting = self._waiting + 1
  w.counted = self -- dequeue counts it out
  modes.share(w, mode) -- shared holds: several try at once
  -- a plain waiter may be handed the lock by a release here (handover)
  if not mode then w.ms, w.deadline = ms, deadline end
  local step, smax, pause = self._step, self._max, 0
  if mode then smax = min(smax, modes.HEARTBEAT_STEP) end -- (its heartbeat)
  local lock, err, code, sent = false, nil, nil, nil
  while not w.grant do
    local left = deadline - now()
    if q[w.at] ~= w then append(q, w) end -- skipped as stale while held up
    local h = head(q)
    if h ~= w and not (w.share and modes.cohead(q, w)) then
      if left <= 0 then break end
      if stale(h) then
        q[h.at] = false -- skipped: the next one takes its turn
      else
        -- a host that cannot unpark: look again each backoff cap; the
        -- second in line looks at the head now and then
        park(w, host_wait.unpark and (second(q, w) and min(left, 1) or left) or min(left, smax))
      end
    else
      if w.kicked then
        w.kicked = false
        w.quick = queues[q.cp].settle and SETTLE or 0 -- (see SETTLE)
      elseif left > 0 and (w.quick or 0) > 0 then
        -- woken, but the try found the key still held on a majority: the
        -- release is on its way to the other nodes
        local t = min(0.005 * 2 ^ (SETTLE - w.quick), smax, left)
        w.quick = w.quick - 1
        w.alive = now() + t
        park(w, t)
        w.kicked = false
      elseif left > 0 then
        pause = min(pause + step, smax)
        -- jitter: waiters of other processes do not step in lockstep
        local t = min(pause * (0.5 + random() * 0.5), left)
        local step_end = now() + t
        w.alive = step_end
        -- only a release of the key (kicked), a hand-over or the step's
        -- end ends the step: anything else that comes on the
        -- subscription's socket (the confirmation of another waiter's
        -- SUBSCRIBE), or a waiter behind leaving, would make a try for
        -- nothing
        repeat
          if q.chan then q.cp:subwait(w, t) else park(w, t) end
          t = step_end - now()
        until w.kicked or w.grant or t <= 0.001 or q[w.at] ~= w
        -- woken in the step (a release's message, or this process's own):
        -- a Redlock try may come before the other nodes released, too
        if w.kicked then w.quick = queues[q.cp].settle and SETTLE or 0 end
        w.kicked = false
      end
      if w.grant then break end -- handed over while it slept its step
      w.alive = now() + 5 -- the try may take a command's timeout
      sent = now()
      lock, err, code = pool:obtain(key, ms, mode)
      if err == "mode" then
        w.ms = nil
        mode, smax = modes.writer(), min(smax, modes.HEARTBEAT_STEP)
        lock, err, code = pool:obtain(key, ms, mode)
      end
      if lock ~= false or now() >= deadline then break end
    end
  end
  local grant = w.grant -- handed over by a release here: no request of its own
  if grant then
    w.grant = nil
    if lock then
      core.handback(grant) -- (cannot be: the key was the grant's)
    else
      lock, sent = grant, w.sent
    end
  end
  dequeue(w)
  if lock == nil then return nil, err, mode, code end
  if not lock then return false, nil, mode end
  return lock, sent, mode
end

-- the first try at a key nobody waited for: its coroutine closed (or
-- failing) in it leaves the queue a caller that came meanwhile made with it
-- at the head (one shared value: nothing is made per try)
local first_try = setmetatable({}, { __close = function()
  local co = coroutine.running()
  local w = firsts[co]
  firsts[co] = nil
  if type(w) == "table" then dequeue(w) end
end })

--- locker:obtain(key, ttl [, wait [, opts]]) -> lock | nil, "not obtained",
--- "not_obtained" | nil, message, code
-- opts.renew = true | seconds: keep the lock alive until it is released;
-- opts.on_lost = fn: fn(lock) once the renewal finds it lost
function Locker.obtain(self, key, ttl, wait, opts)
  if getmetatable(self) ~= Locker then
    error(("calling 'obtain' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  if ntold > 0 and not host_wait then plain_tell() end
  if type(key) ~= "string" then
    argerror(1, "obtain", "key must be a string, got " .. type(key))
  end
  if key == "" then argerror(1, "obtain", "key must not be empty") end
  local ms = duration(ttl, 2, "obtain", "ttl")
  if wait == nil then
    wait = 0
  else
    if type(wait) ~= "number" then
      argerror(3, "obtain", "wait timeout must be a number of seconds, got " .. type(wait))
    end
    if wait ~= wait then argerror(3, "obtain", "wait timeout must not be NaN") end
    if wait < 0 then argerror(3, "obtain", "wait timeout must not be negative") end
  end
  -- a renewed lease outlives any wait; an unrenewed one must outlive it
  local renewing = type(opts) == "table" and opts.renew ~= nil and opts.renew ~= false
  if wait > ttl and not renewing then argerror(3, "obtain", "wait timeout must not exceed ttl") end
  if wait > 1e9 then argerror(3, "obtain", "wait timeout must not exceed 1e9 seconds") end
  local every, on_lost = renew_interval(opts, ttl, ms)
  local pool = self._pool
  local mode = opts and modes.check(opts, core_of(pool))
  if mode and wait > 0 then mode.act = "1" end -- a waiter queues in Redis
  local sent = now() -- the renewal's first deadline counts from the send
  local full = host_wait and wait > 0 and self._prefix .. key
  local lock, err, code, waited
  local t0 = sent
  -- under a host, a waiting obtain queues first: only the head tries, so
  -- one key's waiters get it in the order they came (API.md)
  if full then
    -- (here, not in a function of its own: one call level more grows every
    -- waiting coroutine's stack to its next size, 1.3 KB more each)
    local qs = queues_of(pool)
    local q, w
    local tried = false
    if qs[full] == nil then -- nobody here waits for it: no queue for the try
      local _ <close> = first_try
      qs[full] = coroutine.running()
      lock, err, code = pool:obtain(key, ms, mode)
      lock, err, q, w = first_tried(pool, key, full, qs, lock, err)
      tried = true
    else
      q, w = enqueue(pool, key, full)
    end
    local _ <close> = w -- closed (or failing) from here on: it leaves the queue
    if not tried then
      lock = false
      if head(q) == w then lock, err, code = pool:obtain(key, ms, mode) end
      if lock ~= false then dequeue(w) end
    end
    if lock == false then
      waited = true
      local wsent
      if err == "mode" then mode = modes.writer() end
      lock, wsent, mode, code = wait_queued(self, pool, key, ms, t0 + wait, q, w, mode)
      if lock then sent = wsent else err = wsent end
    end
  else
    lock, err, code = pool:obtain(key, ms, mode)
    if lock == false and wait > 0 then
      waited = true
      self._waiting = self._waiting + 1
      local wsent
      if err == "mode" then mode = modes.writer() end
      lock, wsent, mode, code = wait_for(self, pool, key, ms, t0 + wait, mode)
      self._waiting = self._waiting - 1
      if lock then sent = wsent else err = wsent end
    end
  end
  if waited then
    local took = now() - t0
    self._waited = self._waited + 1
    self._wait_seconds = self._wait_seconds + took
    if took > self._wait_max then self._wait_max = took end
  end
  -- a permit or a shared hold leaves room for the next local waiter: it
  -- tries at once instead of at its next backoff step
  if lock and full and mode and (mode.kind == "l" or mode.kind == "s") then
    released(full, core_of(pool))
  end
  -- counted here, where the final answer is known (plain increments)
  if lock then
    if every then -- a lock that could not be renewed is given back: an error
      lock, err, code = renewed(lock, ms, every, sent, on_lost)
      if not lock then
        self._errors = self._errors + 1
        return nil, err, code
      end
    end
    self._obtained = self._obtained + 1
    return lock
  end
  if lock == false then
    -- its queue entry goes now (after a failure it expires by itself: a
    -- call to a server that just failed could only add to the wait)
    if mode and waited then modes.leave(pool, key, ms, mode) end
    self._not_obtained = self._not_obtained + 1
    return nil, NOT_OBTAINED, "not_obtained"
  end
  self._errors = self._errors + 1
  if mode then
    local merr, mcode = modes.error(mode, err)
    return nil, merr, mcode or code or "io"
  end
  return nil, err, code or "io"
end

--- locker:inspect(key) -> { mode, holders, limit, waiting, ttl } | nil, message
function Locker.inspect(self, key)
  if getmetatable(self) ~= Locker then
    error(("calling 'inspect' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  if type(key) ~= "string" then
    argerror(1, "inspect", "key must be a string, got " .. type(key))
  end
  if key == "" then argerror(1, "inspect", "key must not be empty") end
  if core_of(self._pool):info().kind == "redlock" then
    error("fluxalock: inspect is not available on a Redlock pool", 2)
  end
  return modes.inspect(self._pool, key)
end

--- locker:stats() -> a fresh table of counters since the locker was made
--- (docs/api.md: "Figures and the debug log")
function Locker.stats(self)
  if getmetatable(self) ~= Locker then
    error(("calling 'stats' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  if ntold > 0 and not host_wait then plain_tell() end
  local t = self._pool:counts() -- released, lost, refreshed, errors, reconnects, ...
  t.obtained, t.not_obtained = self._obtained, self._not_obtained
  t.errors = t.errors + self._errors
  t.waited, t.wait_seconds, t.wait_max = self._waited, self._wait_seconds, self._wait_max
  t.waiting = self._waiting -- obtains of this locker waiting right now
  return t
end

--- locker:close(): drop this locker's idle connections (the next call
--- reconnects).  Locks stay valid.
function Locker.close(self)
  if getmetatable(self) ~= Locker then
    error(("calling 'close' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
  end
  if ntold > 0 and not host_wait then plain_tell() end
  self._pool:close()
end

--- locker:once(key, ttl, wait, fn, ...): single flight (lua/fluxalock/once.lua)
Locker.once = require("fluxalock.once").method {
  is_locker = function(v) return getmetatable(v) == Locker end,
  host = function() return host_wait end,
  park = park, unpark = unpark, now = now, NOT_OBTAINED = NOT_OBTAINED,
}

-- ---- module functions ---------------------------------------------------------

local function default_options()
  local url = os.getenv("FLUXALOCK_URL")
  if url == "" then url = nil end -- an empty variable counts as unset
  return config.pool(M.DEFAULT_POOL, url or config.DEFAULT_URL, defaults)
end

--- fluxalock.configure(config) -> true
-- Pools named in config.pools are (re)defined (false removes one); others
-- stay.  config.defaults apply to every pool that does not set an option
-- itself, whenever it was defined.  All of it is checked before any of it
-- is applied: an invalid config changes nothing.
function M.configure(cfg)
  local ok, given, newdefaults = pcall(config.check, cfg, defaults)
  if not ok then error("fluxalock.configure: " .. given, 2) end
  if cfg.defaults == nil then newdefaults = defaults end
  local wait = host_wait
  if cfg.host ~= nil then
    local hok, w = pcall(function() return require("fluxalock.host").resolve(cfg.host) end)
    if not hok then error("fluxalock.configure: " .. tostring(w), 2) end
    wait = w
  end
  local newspecs, newpools = {}, {}
  for name, spec in pairs(specs) do newspecs[name] = spec end
  for name, spec in pairs(given) do newspecs[name] = spec or nil end
  for name, spec in pairs(newspecs) do
    local pok, o = pcall(config.pool, name, spec, newdefaults)
    if not pok then error("fluxalock.configure: " .. o, 2) end
    newpools[name] = o
  end
  local old_default = not pools[M.DEFAULT_POOL] and lockers[M.DEFAULT_POOL] and default_options()
  if cfg.log ~= nil then log_fn = cfg.log or nil end
  -- everything is valid: apply it
  specs, defaults = newspecs, newdefaults
  for name, l in pairs(lockers) do
    local o = newpools[name] or (name == M.DEFAULT_POOL and default_options())
    local before = pools[name] or (name == M.DEFAULT_POOL and old_default)
    if not o or not before or config.signature(before) ~= config.signature(o) then
      lockers[name] = nil
    else
      if wait ~= host_wait then l._pool:sethost(wait) end
      l._log = o.log -- 'log' is not in the signature: it changes in place
    end
  end
  pools = newpools
  if wait ~= host_wait then
    host_wait = wait
    for _, l in pairs(by_url) do l._pool:sethost(wait) end
    -- a release in this process hands its key to the next local waiter
    core.setnotify(wait and released or nil)
    core.sethandover(wait and handover or nil)
    arrange_telling() -- on_lost: a watcher of this host, or the plain way
  end
  for l in pairs(all) do apply_log(l) end
  return true
end

--- fluxalock.locker([pool]) -> Locker
function M.locker(pool)
  if pool == nil then pool = M.DEFAULT_POOL end
  local tp = type(pool)
  if tp == "string" then
    local l = lockers[pool]
    if l then return l end
    local o = pools[pool]
    if not o and pool == M.DEFAULT_POOL then o = default_options() end
    if o then
      l = new_locker(pool, o)
      lockers[pool] = l
      return l
    end
    if not pool:find("://", 1, true) then
      error(("bad argument #1 to 'locker' (unknown pool '%s')"):format(pool), 2)
    end
    l = by_url[pool]
    if l then return l end
    -- the URL names the pool in errors: hide all of its userinfo (up to the
    -- last '@', as the parser reads it; a password may hold '/' or '@')
    local ok, opts = pcall(config.pool, pool:gsub("^([^/]*//).*@", "%1***@"), pool, defaults)
    if not ok then error("bad argument #1 to 'locker' (" .. opts .. ")", 2) end
    l = new_locker(config.where(opts), opts)
    by_url[pool] = l
    return l
  elseif tp == "table" then
    local ok, opts = pcall(config.pool, "(table)", pool, defaults)
    if not ok then error("bad argument #1 to 'locker' (" .. opts .. ")", 2) end
    return new_locker(config.where(opts), opts)
  end
  error("bad argument #1 to 'locker' (pool name, URL or options table expected, got " .. tp .. ")", 2)
end

return M
