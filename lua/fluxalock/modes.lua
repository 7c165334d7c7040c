-- The modes of obtain (API.md "Modes"): opts.limit (a counting semaphore),
-- opts.shared (read-write), opts.fair (first come, first served across
-- processes), and locker:inspect.  One queued design (docs/modes.md): the
-- scripts in csrc/modes_scripts.h keep a key's holders and its queue of
-- waiters in Redis, by the server's clock; this file checks the options,
-- makes the mode table pool:obtain takes, and reads inspect's answer.
-- A plain obtain never comes here (no option of this file: no mode).

local core = require "fluxalock.core"

local type, error, tostring, math_type = type, error, tostring, math.type

local M = {
  -- obtain's option names this file owns
  OPTS = { limit = true, shared = true, fair = true },
  -- a waiting mode obtain tries (and so renews its place in the queue) at
  -- least this often; its entry lives 0.8 s past its last try
  HEARTBEAT_STEP = 0.25,
}

local function argerror(msg)
  -- level 4: the caller of obtain (obtain -> fluxalock.lua helper -> here)
  error(("bad argument #4 to 'obtain' (%s)"):format(msg), 4)
end

-- obtain's opts -> a fresh mode table for pool:obtain, or nil (a plain
-- obtain); raises on misuse.  cp: the core pool (a Redlock pool raises)
function M.check(opts, cp)
  local limit, shared, fair = opts.limit, opts.shared, opts.fair
  if limit == nil and shared == nil and fair == nil then return nil end
  if shared ~= nil and type(shared) ~= "boolean" then
    argerror("option 'shared' must be a boolean, got " .. type(shared))
  end
  if fair ~= nil and type(fair) ~= "boolean" then
    argerror("option 'fair' must be a boolean, got " .. type(fair))
  end
  if limit ~= nil then
    local n = type(limit) == "number" and math_type(limit // 1) and limit // 1 == limit and limit
    if not n or n < 1 or n > 100000 then
      argerror("option 'limit' must be an integer from 1 to 100000, got " ..
        (type(limit) == "number" and tostring(limit) or type(limit)))
    end
    if shared ~= nil then argerror("options 'shared' and 'limit' exclude each other") end
  end
  if cp:info().kind == "redlock" then
    local name = limit ~= nil and "limit" or shared ~= nil and "shared" or "fair"
    argerror(("option '%s' is not supported by Redlock pools"):format(name))
  end
  if limit ~= nil then return { kind = "l", limit = math.tointeger(limit), act = "0" } end
  if shared then return { kind = "s", limit = 0, act = "0" } end
  -- shared = false asks for an exclusive hold that queues with the shared
  -- ones (a writer); fair = true for one that queues in arrival order
  if shared == false or fair then return { kind = "x", limit = 0, act = "0" } end
  return nil
end

-- the mode of a plain obtain that found the key held in a mode and waits:
-- it queues like a writer (readers arriving later wait behind it) and gets
-- the plain lock, its own token as the key's value
function M.writer()
  return { kind = "p", limit = 0, act = "1" }
end

-- ---- the local queue (fluxalock.lua, under a host) -------------------------
-- A plain lock's local queue lets only its head try.  Shared holds can be
-- had by many at once: the shared waiters at the front of a key's local
-- queue (up to CO_HEADS) try together, so a phase of readers goes in at
-- once.  (Permits do not: there each release frees one, and the waiters
-- that tried together for it cost more than a round trip each, measured
-- in W8; a permit's grant kicks the next waiter instead, fluxalock.lua.)
local CO_HEADS = 64

-- marks the waiter w of a shared obtain
function M.share(w, mode)
  if mode and mode.kind == "s" then w.share, w.cap = "s", CO_HEADS end
end

-- w (a sharing waiter) may try: every live waiter ahead of it in q shares
-- the same way, and fewer than its cap of them
function M.cohead(q, w)
  local n = 0
  for i = q.first, w.at - 1 do
    local o = q[i]
    if o then
      if o.share ~= w.share then return false end
      n = n + 1
      if n >= w.cap then return false end
    end
  end
  return true
end

-- a release reached the head h: the waiters that try together with it are
-- woken too
function M.kick_coheads(q, h, unpark)
  local n = 1
  for i = h.at + 1, q.last do
    local o = q[i]
    if o then
      if o.share ~= h.share or n >= h.cap then return end
      o.kicked = true
      unpark(o)
      n = n + 1
    end
  end
end

-- a mode obtain's error -> message, code ("limit" when the key's holders
-- and waiters use another limit)
function M.error(mode, err)
  local theirs = type(err) == "string" and err:match(": LIMIT (%d+)$")
  if theirs then
    return ("fluxalock: obtain: limit %d given, but the key's holders and waiters use limit %s")
      :format(mode.limit, theirs), "limit"
  end
  return err
end

-- leave the queue in Redis (a waiter that gives up); best effort: an entry
-- left behind expires 0.8 s after its last try
function M.leave(pool, key, ms, mode)
  if not mode.token then return end
  mode.act = "2"
  pcall(pool.obtain, pool, key, ms, mode)
end

local MODES = { free = true, exclusive = true, shared = true, limit = true, foreign = true }

-- locker:inspect(key) on the pool 'pool' (a core Pool, or a Lua pool with
-- a core group) -> { mode, holders, limit, waiting, ttl } | nil, message, code
function M.inspect(pool, key)
  local cp = type(pool) == "table" and pool.group or pool
  local k, h, q, m, body = core.modekeys(cp, key)
  local via = pool.call and pool or cp
  local r, err, code = via:call { "EVAL", body, "4", k, h, q, m }
  if not r then return nil, err, code or "io" end
  if type(r) ~= "table" or not MODES[r[1]] then
    return nil, "fluxalock: inspect: unexpected reply", "io"
  end
  return {
    mode = r[1],
    holders = r[2],
    limit = r[3] >= 0 and r[3] or nil,
    waiting = r[4],
    ttl = r[5] / 1000,
  }
end

return M
