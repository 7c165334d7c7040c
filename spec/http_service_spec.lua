-- examples/http_service.lua as a user runs it: two service processes (lua-http
-- on Lua 5.4, the cqueues host) against a real redis-server, in front of
-- examples/slow_backend.lua (a real HTTP server, 20 ms a call, that counts
-- calls per key and per service and calls of one key that overlap), driven
-- by 200 concurrent lua-http clients in cqueues coroutines on 4 keys.
local R = require "support.redis"
if not pcall(require, "http.request") then -- Debian's lua-http is packaged for 5.1-5.3
  package.path = package.path .. ";/usr/share/lua/5.3/?.lua;/usr/share/lua/5.3/?/init.lua"
    .. ";/usr/share/lua/5.2/?.lua;/usr/share/lua/5.2/?/init.lua"
end
local http_request = require "http.request"
local cqueues = require "cqueues"

local FRESH = 0.5
local KEYS = { "alpha", "beta", "gamma", "delta" }

-- an example started as its own process; its "listening on" line is the
-- signal that it accepts -> the process, its port
local function start(script, args, env)
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = ("%q"):format(a) end
  local proc = R.spawn(("arg = { %s }\ndofile(%q)\n"):format(table.concat(quoted, ", "), script), env)
  local port
  R.until_true(function()
    port = tonumber(proc:output():match("listening on http://127%.0%.0%.1:(%d+)"))
    return port ~= nil or not R.alive(proc.pid)
  end, 20, script .. " to listen")
  assert(port, script .. " did not start: " .. proc:output())
  return proc, port
end

local function stop(proc)
  if proc and R.alive(proc.pid) then
    proc:signal("TERM")
    proc:wait(10)
  end
end

-- one GET with lua-http's client -> status, body (nil, message on failure)
local function get(url)
  local headers, stream = http_request.new_from_uri(url):go(10)
  if not headers then return nil, tostring(stream) end
  local body, err = stream:get_body_as_string(10)
  if not body then return nil, tostring(err) end
  return headers:get(":status"), body
end

-- 'conc' clients for 'seconds' (and two requests each at least), each sending
-- its requests one after the other to the services in turn, on KEYS ->
-- { n, bad = {...}, took }
local function drive(ports, conc, seconds)
  local cq = cqueues.new()
  local res = { n = 0, bad = {} }
  local t0 = cqueues.monotime()
  local stop_at = t0 + seconds
  for c = 1, conc do
    cq:wrap(function()
      local j = c
      -- two requests at least, however slow a loaded machine is: a bound on
      -- the count, not on the throughput
      while j < c + 2 or cqueues.monotime() < stop_at do
        local key = KEYS[j % #KEYS + 1]
        local port = ports[j // #KEYS % #ports + 1] -- every key to every service
        j = j + 1
        local status, body = get(("http://127.0.0.1:%d/item/%s"):format(port, key))
        res.n = res.n + 1
        if status ~= "200" or body ~= "value of " .. key then
          res.bad[#res.bad + 1] = ("%s %s: %s %s"):format(port, key, tostring(status), tostring(body))
        end
      end
    end)
  end
  assert(cq:loop())
  res.took = cqueues.monotime() - t0
  return res
end

-- the backend's own count -> { calls, overlaps, per = { [key] = { [service] = n } } }
local function backend_stats(port)
  local status, body = get(("http://127.0.0.1:%d/stats"):format(port))
  assert.equal("200", status, body)
  local st = { per = {} }
  st.calls = tonumber(body:match("calls (%d+)"))
  st.overlaps = tonumber(body:match("overlaps (%d+)"))
  for key, service, n in body:gmatch("key (%S+) (%S+) (%d+)") do
    st.per[key] = st.per[key] or {}
    st.per[key][service] = tonumber(n)
  end
  return st
end

describe("examples/http_service.lua: two services, a slow backend, 200 concurrent clients", function()
  local server, backend, bport
  local procs = {}

  R.setup({ module = false }, function(e) server = e.server end)

  before_each(function()
    backend, bport = start("examples/slow_backend.lua", { "--port", "0", "--delay", "0.02" })
  end)

  after_each(function()
    for _, p in ipairs(procs) do stop(p) end
    procs = {}
    stop(backend)
  end)

  local function services(guard)
    local ports = {}
    for n = 1, 2 do
      local p, port = start("examples/http_service.lua", {
        "--port", "0", "--backend", "http://127.0.0.1:" .. bport, "--name", "s" .. n,
        "--fresh", tostring(FRESH), "--guard", guard,
      }, { FLUXALOCK_URL = server.url })
      procs[#procs + 1] = p
      ports[n] = port
    end
    return ports
  end

  for _, guard in ipairs { "once", "obtain" } do
    it(("guard '%s': every answer 200 with its key's value; the backend never sees one key twice at once, "
      .. "and each service calls it at most once per key per expiry"):format(guard), function()
      local ports = services(guard)
      local res = drive(ports, 200, 2)
      local st = backend_stats(bport)
      assert.same({}, res.bad)
      assert.equal(0, st.overlaps)
      -- a key is fetched when its entry has expired: at most once per FRESH
      -- seconds of the run, plus the first fetch
      local most = math.floor(res.took / FRESH) + 1
      for _, key in ipairs(KEYS) do
        for _, service in ipairs { "s1", "s2" } do
          local n = st.per[key] and st.per[key][service]
          assert.is_true(n ~= nil and n >= 1, ("%s never fetched %s"):format(service, key))
          assert.is_true(n <= most, ("%s fetched %s %d times in %.2f s (at most %d)"):format(service, key, n,
            res.took, most))
        end
      end
      -- the services leave no lock behind
      for _, key in ipairs(KEYS) do assert.equal("0", server:cli("EXISTS", "regen:" .. key)) end
    end)
  end

  it("without a guard the backend does see overlapping calls (the measure can fail)", function()
    local ports = services("none")
    local res = drive(ports, 200, 1)
    local st = backend_stats(bport)
    assert.same({}, res.bad)
    assert.is_true(st.overlaps > 0, "no overlap seen without a guard")
  end)
end)
