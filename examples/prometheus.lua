-- fluxalock's counters in Prometheus' text exposition format (version
-- 0.0.4, what a /metrics endpoint serves).  No HTTP server here: hand the
-- string to whatever serves your metrics (or write it to a file for node
-- exporter's textfile collector).
--
--   local render = dofile "examples/prometheus.lua"   -- returns the function
--   local text = render { fluxalock.locker(), fluxalock.locker("jobs") }
--
-- Run as a script it obtains and releases one lock on the default pool
-- ($FLUXALOCK_URL, or redis://127.0.0.1:6379/0) and prints the result:
--
--   lua5.4 examples/prometheus.lua
--
--   # HELP fluxalock_errors_total Calls that returned nil, message (Redis down, timeout, ...).
--   # TYPE fluxalock_errors_total counter
--   fluxalock_errors_total{pool="default"} 0
--   ...
--
-- Each metric family is written once (HELP, TYPE, then one sample per
-- locker, labelled with the locker's pool name); counters end in _total,
-- the largest wait is a gauge.  Keys a pool kind adds (failovers, moved,
-- slot_reloads, ...) become counters of their own.

local HELP = {
  obtained = "Obtains that returned a lock.",
  not_obtained = "Obtains that returned nil, \"not obtained\" (held elsewhere, wait ran out).",
  errors = "Calls that returned nil, message (Redis down, timeout, ...).",
  released = "Releases that released the lock.",
  lost = "Locks found gone (expired or taken over) by release, refresh, ttl or renewal.",
  refreshed = "Refreshes that extended the lock.",
  renewed = "Renewals that extended the lock.",
  waited = "Obtains that found the lock held and waited.",
  wait_seconds = "Seconds spent by obtains that waited.",
  wait_max = "The longest wait of one obtain, in seconds.",
  reconnects = "Connections made again after the server or a failure dropped them.",
  redirects = "Cluster MOVED and ASK redirects followed.",
  failovers = "Sentinel: times the master was found at a new address.",
  moved = "Cluster: MOVED redirects followed.",
  asked = "Cluster: ASK redirects followed.",
  slot_reloads = "Cluster: times the slot map was loaded.",
}

-- stats key -> metric name and type
local function metric(key)
  if key == "wait_max" then return "fluxalock_wait_max_seconds", "gauge" end
  if key == "wait_seconds" then return "fluxalock_wait_seconds_total", "counter" end
  return "fluxalock_" .. key:gsub("[^%w_]", "_") .. "_total", "counter"
end

-- a label value: backslash, double quote and line feed escaped
local function label(v)
  return (v:gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- a HELP text: backslash and line feed escaped
local function help(v)
  return (v:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

local function number(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  return ("%.17g"):format(v)
end

--- render(lockers) -> the exposition text; lockers: one Locker or a list
local function render(lockers)
  if getmetatable(lockers) and getmetatable(lockers).__name == "fluxalock.Locker" then
    lockers = { lockers }
  end
  local rows, keys, seen = {}, {}, {}
  for i, l in ipairs(lockers) do
    rows[i] = { pool = l.name, stats = l:stats() }
    for k, v in pairs(rows[i].stats) do
      if type(v) == "number" and not seen[k] then
        seen[k] = true
        keys[#keys + 1] = k
      end
    end
  end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local name, kind = metric(k)
    out[#out + 1] = ("# HELP %s %s"):format(name, help(HELP[k] or ("fluxalock counter '" .. k .. "'.")))
    out[#out + 1] = ("# TYPE %s %s"):format(name, kind)
    for _, row in ipairs(rows) do
      local v = row.stats[k]
      if v ~= nil then
        out[#out + 1] = ('%s{pool="%s"} %s'):format(name, label(row.pool), number(v))
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- dofile'd or required: hand out the function; run as a script: a demo
if not (arg and arg[0] and arg[0]:match("prometheus%.lua$")) then return render end

local fluxalock = require "fluxalock"
local locker = fluxalock.locker()
local lock, err = locker:obtain("prometheus-example", 5)
if not lock then
  io.stderr:write(err, "\n")
  os.exit(1)
end
lock:release()
io.write(render(locker))
