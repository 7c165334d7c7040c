-- fluxalock.once: single flight (API.md "Single flight", docs/once.md).
--
--   locker:once(key, ttl, wait, fn, ...) -> what fn(...) returned
--
-- Across processes the lock (obtained with renew) lets one call of fn run
-- at a time.  Inside a process, a table (locker -> key -> the flight
-- running now) lets one call start: callers that come while it runs park
-- on the event-loop host (its park/unpark, the same the local waiting
-- queue uses) and are handed the very same values, or raise the very same
-- error value.
--
-- What each caller gets:
-- * the flight returned values: those values (every one, nils included);
-- * fn raised: the flight raises that error value (level 0: no position
--   added) in every caller;
-- * the flight could not obtain: what obtain returned, with
--   nil, "not obtained", "not_obtained" for a lock held past the wait;
-- * a joining caller's own wait ran out first: nil, "not obtained",
--   "not_obtained" (as obtain with that wait would have said); the flight
--   runs on for the others;
-- * the flight's coroutine was closed (coroutine.close) or abandoned by an
--   error outside fn: its lock is released (queued, sent in front of the
--   pool's next request, when Lua cannot yield there) and the callers that
--   still have time start over: one of them runs the next flight.
-- * fn calls once for its own key (same locker, same coroutine): that
--   would wait for itself, so it raises (bad argument #1 to 'once').
-- Without a host (a plain script) nothing runs beside a call: once is
-- obtain, fn, release.

local type, error, pcall, getmetatable, setmetatable = type, error, pcall, getmetatable, setmetatable
local pack, unpack, min = table.pack, table.unpack, math.min
local running, isyieldable = coroutine.running, coroutine.isyieldable

local M = {}

local NOT_OBTAINED_CODE = "not_obtained"
local RENEW = { renew = true } -- obtain's options for a flight (never changed)

local function argerror(n, msg, level)
  -- level 3: the caller of once (argerror <- once <- caller); 4 from a
  -- helper of once
  error(("bad argument #%d to 'once' (%s)"):format(n, msg), level or 3)
end

local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

-- seconds, checked as obtain checks them but naming 'once'
local function seconds(v, n, what, least)
  if type(v) ~= "number" then
    argerror(n, ("%s must be a number of seconds, got %s"):format(what, type(v)), 4)
  end
  if v ~= v then argerror(n, what .. " must not be NaN", 4) end
  if v < least then
    argerror(n, least > 0 and what .. " must be at least 0.001 seconds" or what .. " must not be negative", 4)
  end
  if v > 1e9 then argerror(n, what .. " must not exceed 1e9 seconds", 4) end
end

--- M.method(ctx) -> the function Locker.once.  ctx (from fluxalock.lua):
--- is_locker(v), host() -> the host table or nil, park(token, secs),
--- unpark(token), now(), NOT_OBTAINED.
function M.method(ctx)
  local is_locker, host, park, unpark, now = ctx.is_locker, ctx.host, ctx.park, ctx.unpark, ctx.now
  local NOT = { nil, ctx.NOT_OBTAINED, NOT_OBTAINED_CODE, n = 3 }
  local flights = setmetatable({}, { __mode = "k" }) -- locker -> { [key] = flight }

  -- A flight: { t = its key table, key, leader = coroutine, waiters = park
  -- tokens, state = nil (running) | "done" | "raised" | "aborted", res =
  -- the packed pcall results }.  It is the leader's to-be-closed value:
  -- however the leader's call ends (return, raise, coroutine.close), the
  -- flight leaves the table and its waiters are woken.
  local Flight = {}
  Flight.__close = function(f)
    if not f.state then f.state = "aborted" end
    if f.t[f.key] == f then f.t[f.key] = nil end
    local w = f.waiters
    for i = 1, #w do unpark(w[i]) end -- each runs at the loop's next turn
  end

  -- a caller that came while f runs: parks until f ends or its own
  -- deadline; -> the packed results, or nil to start over (f aborted)
  local function join(f, deadline, step)
    local token = {}
    local w = f.waiters
    w[#w + 1] = token
    while not f.state do
      local left = deadline - now()
      if left <= 0 then return NOT end
      -- a host without unpark cannot wake us: look again each step
      park(token, step and min(left, step) or left)
    end
    if f.state == "raised" then error(f.res[2], 0) end
    if f.state == "aborted" then return nil end
    return f.res
  end

  return function(self, key, ttl, wait, fn, ...)
    if not is_locker(self) then
      error(("calling 'once' on bad self (fluxalock.Locker expected, got %s)"):format(type(self)), 2)
    end
    if type(key) ~= "string" then argerror(1, "key must be a string, got " .. type(key)) end
    if key == "" then argerror(1, "key must not be empty") end
    seconds(ttl, 2, "ttl", 0.001)
    if wait == nil then wait = 0 end
    seconds(wait, 3, "wait timeout", 0)
    if not callable(fn) then argerror(4, "fn must be callable, got " .. type(fn)) end
    local deadline = now() + wait
    local h = host()
    local t = flights[self]
    if not t then
      t = {}
      flights[self] = t
    end
    local me = running()
    while true do
      local f = t[key]
      if f and f.leader == me then
        argerror(1, "fn of a running once called once for the same key: it would wait for itself")
      end
      -- no flight: this call runs one.  Without a host nothing can wait
      -- beside a call (a coroutine driven by hand), and a caller that
      -- cannot yield cannot park: it runs its own (its obtain then says
      -- what the host says, as obtain would)
      if not f or not h or not isyieldable() then break end
      local r = join(f, deadline, not h.unpark and self._step)
      if r then
        if r == NOT then return nil, NOT[2], NOT[3] end
        return unpack(r, 2, r.n)
      end
    end
    local f = nil
    if not t[key] then
      f = setmetatable({ t = t, key = key, leader = me, waiters = {} }, Flight)
      t[key] = f
    end
    local _ <close> = f -- (nil when it runs on its own)
    local left = deadline - now()
    local r = pack(pcall(self.obtain, self, key, ttl, left > 0 and left or 0, RENEW))
    if not r[1] then
      -- obtain's own misuse check (its arguments 1 to 3 are ours)
      local n, rest
      if type(r[2]) == "string" then n, rest = r[2]:match("bad argument (#%d+) to 'obtain'(.*)$") end
      if n then error(("bad argument %s to 'once'%s"):format(n, rest), 2) end
      error(r[2], 0)
    end
    local lock = r[2]
    if not lock then
      if r[3] == ctx.NOT_OBTAINED then r = { true, nil, NOT[2], NOT[3], n = 4 } end
      if f then f.res, f.state = r, "done" end
      return unpack(r, 2, r.n)
    end
    local _ <close> = lock -- released however this call ends
    r = pack(pcall(fn, ...))
    -- the result first: a coroutine closed in the release below still
    -- hands it to its waiters (the release is queued then)
    if f then
      f.res, f.state = r, r[1] and "done" or "raised"
    end
    lock:release() -- before the waiters run (errors: the lease ends by its ttl)
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end

return M
