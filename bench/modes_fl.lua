-- One run of the modes' workloads in one luv process (bench/modes.lua starts
-- it):
--
--   lua5.4 bench/modes_fl.lua MODE PORT OUT [ARGS...]
--
-- w8 N LIMIT HOLD: N coroutines each take one of LIMIT permits of one key
-- once (opts.limit), hold it HOLD s across a uv timer, release.
-- w9 READERS WRITERS SECONDS HOLD: READERS coroutines take the key shared,
-- WRITERS exclusive (shared = false), each in a loop for SECONDS, holding
-- HOLD s.
-- w2 KEY START END FAIR: a plain script (no host) that takes KEY in a loop
-- from START to END (CLOCK_MONOTONIC seconds), with fair = true when FAIR
-- is "1", counting itself in Redis; each try takes a ticket stamped with
-- the server's time first, and a grant while a ticket 50 ms or more older
-- is still pending counts as an overtake.
-- Writes one line of name=value figures to OUT.
local fluxalock = require "fluxalock"
local core = require "fluxalock.core"

local mode, PORT, OUT = arg[1], tonumber(arg[2]), arg[3]
local now = core.now
local URL = ("redis://127.0.0.1:%d/0"):format(PORT)

if mode ~= "w2" then fluxalock.configure { host = "luv", pools = { default = URL } } end
local locker = fluxalock.locker(URL)
local counter = fluxalock.locker { url = URL }._pool

local function write(res)
  local f = assert(io.open(OUT, "w"))
  local names = {}
  for k in pairs(res) do names[#names + 1] = k end
  table.sort(names)
  for i, k in ipairs(names) do names[i] = ("%s=%.6f"):format(k, res[k]) end
  f:write(table.concat(names, " "), "\n")
  f:close()
end

local function sleep(s)
  local uv = require "luv"
  local co = coroutine.running()
  local t = uv.new_timer()
  t:start(math.max(1, math.floor(s * 1000 + 0.5)), 0, function()
    t:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

local function spawn(fn) assert(coroutine.resume(coroutine.create(fn))) end

if mode == "w2" then
  local KEY, START, END, FAIR = arg[4], tonumber(arg[5]), tonumber(arg[6]), arg[7] == "1"
  local opts = FAIR and { fair = true } or nil
  local st = { count = 0, overtakes = 0, violations = 0, failed = 0 }
  if START > now() then core.sleep(START - now()) end
  while now() < END do
    local t = counter:call { "INCR", KEY .. ":ticket" }
    local tm = counter:call { "TIME" }
    local at = tonumber(tm[1]) * 1000 + tonumber(tm[2]) // 1000
    counter:call { "ZADD", KEY .. ":pending", at, t }
    local lock = locker:obtain(KEY, 10, 5, opts)
    counter:call { "ZREM", KEY .. ":pending", t }
    if lock then
      if #counter:call { "ZRANGEBYSCORE", KEY .. ":pending", "-inf", at - 50, "LIMIT", 0, 1 } > 0 then
        st.overtakes = st.overtakes + 1
      end
      if counter:call { "INCR", KEY .. ":holders" } ~= 1 then st.violations = st.violations + 1 end
      counter:call { "DECR", KEY .. ":holders" }
      lock:release()
      if now() < END then st.count = st.count + 1 end
    else
      st.failed = st.failed + 1
    end
  end
  write(st)
elseif mode == "w8" then
  local N, LIMIT, HOLD = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
  local st = { obtained = 0, failed = 0, most = 0, over = 0 }
  local t0 = now()
  local left = N
  for _ = 1, N do
    spawn(function()
      local lock = locker:obtain("w8", 60, 60, { limit = LIMIT })
      if lock then
        st.obtained = st.obtained + 1
        local c = counter:call { "INCR", "w8:inside" }
        if c > st.most then st.most = c end
        if c > LIMIT then st.over = st.over + 1 end
        sleep(HOLD)
        counter:call { "DECR", "w8:inside" }
        lock:release()
      else
        st.failed = st.failed + 1
      end
      left = left - 1
      if left == 0 then st.elapsed = now() - t0 end
    end)
  end
  require("luv").run()
  st.n = N
  write(st)
elseif mode == "w9" then
  local READERS, WRITERS, SECONDS, HOLD = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6]), tonumber(arg[7])
  local st = { reads = 0, writes = 0, writer_wait_max = 0, reader_wait_max = 0, reader_hold_max = 0,
    failed = 0, overlaps = 0 }
  local inside_r, inside_w = 0, 0
  local t0 = now()
  local stop = t0 + SECONDS
  local function worker(shared)
    return function()
      while now() < stop do
        local ta = now()
        local lock = locker:obtain("w9", 60, 60, { shared = shared })
        local tb = now()
        if not lock then
          st.failed = st.failed + 1
        else
          local key = shared and "reader_wait_max" or "writer_wait_max"
          if tb - ta > st[key] then st[key] = tb - ta end
          if shared then
            inside_r = inside_r + 1
            if inside_w > 0 then st.overlaps = st.overlaps + 1 end
          else
            inside_w = inside_w + 1
            if inside_w > 1 or inside_r > 0 then st.overlaps = st.overlaps + 1 end
          end
          sleep(HOLD)
          if shared then inside_r = inside_r - 1 else inside_w = inside_w - 1 end
          local th = now()
          if shared and th - tb > st.reader_hold_max then st.reader_hold_max = th - tb end
          lock:release()
          if tb < stop then st[shared and "reads" or "writes"] = st[shared and "reads" or "writes"] + 1 end
        end
      end
    end
  end
  for i = 1, READERS + WRITERS do
    -- the writers spread among the readers
    spawn(worker(i % math.max(1, (READERS + WRITERS) // math.max(1, WRITERS)) ~= 0))
  end
  require("luv").run()
  st.elapsed = SECONDS
  write(st)
end
