-- fluxalock.config: URL parsing and strict validation of pool options.
-- Pure Lua, testable without Redis.  Every error names the pool and the
-- option; no error or string built here ever contains a password.

local M = {}

local tointeger, type, pairs, tostring = math.tointeger, type, pairs, tostring

M.DEFAULT_URL = "redis://127.0.0.1:6379/0"

-- option -> kind of value
local OPTIONS = {
  url = "string",
  host = "string",
  port = "integer",
  path = "string",
  db = "integer",
  username = "string",
  password = "string",
  connect_timeout = "duration",
  timeout = "duration",
  prefix = "string",
  retry_step = "duration",
  retry_max = "duration",
  -- pool kinds beside the single server (docs/pools.md)
  sentinels = "list",          -- {"host:port", ...} of Redis Sentinels
  master = "string",           -- the master's name the sentinels monitor
  sentinel_password = "string",
  redlock = "list",            -- {url, url, ...}: independent masters
  cluster = "list",            -- {"host:port", ...}: seed nodes of a cluster
  replicas = "integer",        -- obtain/refresh WAIT for this many replicas
  replica_timeout = "duration",
  log = "log",                 -- fn(event) | false: this pool's debug log
  tls = "tls",                 -- true | { ca_file=, ..., verify= } (docs/tls.md)
  max_connections = "integer", -- the most connections to one server (API.md)
}
local KINDS = { "sentinels", "redlock", "cluster" }
M.OPTIONS = OPTIONS

M.DEFAULTS = {
  host = "127.0.0.1", port = 6379, db = 0,
  connect_timeout = 1, timeout = 1, prefix = "",
  -- linear backoff of a waiting obtain: the n-th wait is n * retry_step,
  -- capped at retry_max.  Waiters are woken by the release itself, so these
  -- only bound how late an expired lock (holder crashed) is noticed.
  retry_step = 0.005, retry_max = 0.1,
  -- requests of any number of coroutines share this many connections
  max_connections = 4,
}

local MAX_SECONDS = 1e9

-- the keys of a 'tls' table (and of a rediss:// query string)
local TLS_KEYS = { ca_file = true, ca_path = true, cert_file = true, key_file = true,
                   server_name = true, verify = true }
local VERIFY = { full = true, ca = true, none = true }
M.TLS_KEYS = TLS_KEYS

local function fail(pool, key, msg)
  if key then
    error(("pool '%s': option '%s' %s"):format(pool, key, msg), 0)
  end
  error(("pool '%s': %s"):format(pool, msg), 0)
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- the TLS keys of a redis(s):// query string, into o.tls
local function tls_query(pool, o, query)
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do
    if not TLS_KEYS[k] then fail(pool, "url", ("has an unknown query parameter '%s'"):format(k)) end
    if not o.tls then fail(pool, "url", ("has '%s', a TLS setting: use rediss://"):format(k)) end
    o.tls[k] = unescape(v)
  end
  if query ~= "" and not query:find("=", 1, true) then
    fail(pool, "url", "has a malformed query (expected ?key=value&...)")
  end
end

-- redis://[[user]:password@]host[:port][/db], rediss://... the same over TLS
-- (with ?ca_file=...&verify=... from TLS_KEYS)
-- unix:///path/to/redis.sock[?db=N]
-- Returns a table of options, or raises "pool 'name': ..." on a bad URL.
function M.parse_url(url, pool)
  pool = pool or "?"
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then fail(pool, "url", "is not a URL (redis://host:port/db or unix:///path)") end
  scheme = scheme:lower()
  local o = {}
  if scheme == "unix" then
    local path, query = rest:match("^([^?]*)%??(.*)$")
    if path == "" or path:sub(1, 1) ~= "/" then
      fail(pool, "url", "needs an absolute socket path (unix:///path/to/redis.sock)")
    end
    o.path = unescape(path)
    for k, v in query:gmatch("([^&=]+)=([^&]*)") do
      if k == "db" then
        o.db = tointeger(tonumber(v))
        if not o.db then fail(pool, "url", "has a db that is not a number") end
      else
        fail(pool, "url", ("has an unknown query parameter '%s'"):format(k))
      end
    end
    if query ~= "" and not query:find("=", 1, true) then
      fail(pool, "url", "has a malformed query (expected ?db=N)")
    end
    return o
  elseif scheme ~= "redis" and scheme ~= "rediss" then
    fail(pool, "url", ("has an unsupported scheme '%s' (redis://, rediss:// or unix://)"):format(scheme))
  end
  local query
  rest, query = rest:match("^([^?]*)%??(.*)$")
  if scheme == "rediss" then o.tls = {} end
  tls_query(pool, o, query)
  local userinfo, hostpart = rest:match("^(.*)@([^@]*)$")
  if not userinfo then hostpart = rest end
  if userinfo then
    local user, pass = userinfo:match("^([^:]*):(.*)$")
    if not user then
      -- redis://secret@host is the old form: the whole userinfo is a password
      user, pass = "", userinfo
    end
    if user ~= "" then o.username = unescape(user) end
    if pass ~= "" then o.password = unescape(pass) end
  end
  local hostport, db = hostpart:match("^([^/]*)/?(.*)$")
  if db ~= "" then
    o.db = tointeger(tonumber(db))
    if not o.db or not db:match("^%d+$") then fail(pool, "url", "has a db that is not a number") end
  end
  local host, port
  if hostport:sub(1, 1) == "[" then -- [::1]:6379
    host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  else
    host, port = hostport:match("^([^:]*):?(%d*)$")
  end
  if not host then fail(pool, "url", "has a malformed host or port") end
  if host ~= "" then o.host = host end
  if port ~= "" then o.port = tointeger(tonumber(port)) end
  return o
end

-- "host:port" or "[v6]:port" -> host, port (nil when malformed)
function M.hostport(s)
  local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:]+):(%d+)$") end
  port = tointeger(tonumber(port))
  if not host or not port or port < 1 or port > 65535 then return nil end
  return host, port
end

local function check_duration(pool, key, v)
  if type(v) ~= "number" then fail(pool, key, "must be a number of seconds, got " .. type(v)) end
  if v ~= v then fail(pool, key, "must not be NaN") end
  if v < 0.001 then fail(pool, key, "must be at least 0.001 seconds") end
  if v > MAX_SECONDS then fail(pool, key, "must not exceed 1e9 seconds") end
end

-- 'tls' = true or a table of TLS_KEYS (strings; verify one of VERIFY)
function M.check_tls(pool, v)
  if v == true then return end
  if type(v) ~= "table" then fail(pool, "tls", "must be true or a table, got " .. tostring(type(v))) end
  for k, x in pairs(v) do
    if not TLS_KEYS[k] then fail(pool, "tls", ("has an unknown key '%s'"):format(tostring(k))) end
    local opt = "tls." .. k
    if type(x) ~= "string" then fail(pool, opt, "must be a string, got " .. type(x)) end
    if x == "" or x:find("\0", 1, true) then fail(pool, opt, "must be a non-empty string without NUL") end
    if k == "verify" and not VERIFY[x] then
      fail(pool, opt, ("must be \"full\", \"ca\" or \"none\", got '%s'"):format(x))
    end
  end
end

-- the TLS settings of a pool: the URL's (rediss://, ?query) overridden by
-- the 'tls' option; nil when TLS is off.  Files are checked here, so a
-- missing or unreadable one raises at configure, naming the option.
local function merge_tls(pool, from_url, given)
  if not from_url and not given then return nil end
  local t = {}
  for k, v in pairs(from_url or {}) do t[k] = v end
  if type(given) == "table" then for k, v in pairs(given) do t[k] = v end end
  M.check_tls(pool, t)
  if (t.cert_file ~= nil) ~= (t.key_file ~= nil) then
    if t.cert_file then fail(pool, "tls.cert_file", "needs 'key_file' (the certificate's key)") end
    fail(pool, "tls.key_file", "needs 'cert_file' (the key's certificate)")
  end
  for _, k in ipairs { "ca_file", "cert_file", "key_file" } do
    if t[k] then
      local f, err = io.open(t[k], "r")
      if not f then fail(pool, "tls." .. k, "cannot be read: " .. tostring(err)) end
      f:close()
    end
  end
  t.verify = t.verify or "full"
  return t
end

local function check_value(pool, key, v)
  local kind = OPTIONS[key]
  if not kind then fail(pool, key, "is not a known option") end
  if kind == "list" then
    if type(v) ~= "table" then fail(pool, key, "must be a list of strings, got " .. type(v)) end
    if #v == 0 then fail(pool, key, "must not be empty") end
    for k in pairs(v) do
      if math.type(k) ~= "integer" or k < 1 or k > #v then fail(pool, key, "must be a list (no other keys)") end
    end
    for i, e in ipairs(v) do
      if type(e) ~= "string" or e == "" then fail(pool, key, ("entry %d must be a non-empty string"):format(i)) end
      if key ~= "redlock" and not M.hostport(e) then
        fail(pool, key, ("entry %d must be 'host:port', got '%s'"):format(i, e))
      end
    end
  elseif kind == "string" then
    if type(v) ~= "string" then fail(pool, key, "must be a string, got " .. type(v)) end
    if key ~= "prefix" and key ~= "password" and v == "" then fail(pool, key, "must not be empty") end
    if key ~= "prefix" and v:find("\0", 1, true) then fail(pool, key, "must not contain a NUL byte") end
  elseif kind == "integer" then
    -- math.tointeger also converts numeric strings ("6379"): ask for a number
    if type(v) ~= "number" or not tointeger(v) then
      fail(pool, key, "must be an integer, got " .. (type(v) == "number" and tostring(v) or type(v)))
    end
    if key == "max_connections" and (v < 1 or v > 1024) then
      fail(pool, key, "must be from 1 to 1024, got " .. tostring(v))
    end
  elseif kind == "tls" then
    M.check_tls(pool, v)
  elseif kind == "log" then
    if v ~= false and type(v) ~= "function" then
      fail(pool, key, "must be a function or false, got " .. type(v))
    end
  else
    check_duration(pool, key, v)
  end
end

-- Normalize one pool definition (a URL string or a table) into a flat table
-- of every option, defaults filled in from 'defaults' then M.DEFAULTS.
function M.pool(name, spec, defaults)
  local given
  if type(spec) == "string" then
    given = { url = spec }
  elseif type(spec) == "table" then
    given = spec
  else
    fail(name, nil, "must be a URL string or a table, got " .. type(spec))
  end
  for k, v in pairs(given) do
    if type(k) ~= "string" then fail(name, tostring(k), "is not a known option") end
    check_value(name, k, v)
  end
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(defaults or {}) do o[k] = v end
  local url_tls
  if given.url then
    local u = M.parse_url(given.url, name)
    for k, v in pairs(u) do o[k] = v end
    url_tls = u.tls
  end
  for k, v in pairs(given) do
    if k ~= "url" then o[k] = v end
  end
  o.url = nil
  local given_tls = given.tls
  if given_tls == nil and defaults then given_tls = defaults.tls end
  o.tls = merge_tls(name, url_tls, given_tls)
  -- a socket path wins over host/port unless host/port were given explicitly
  if o.path and (given.host or given.port) and not given.path then o.path = nil end
  if o.path then o.host, o.port = nil, nil end
  if o.host and (o.port < 1 or o.port > 65535) then
    fail(name, "port", "must be from 1 to 65535")
  end
  if o.db < 0 then fail(name, "db", "must not be negative") end
  if o.username and not o.password then
    fail(name, "username", "needs a password")
  end
  if o.retry_max < o.retry_step then
    fail(name, "retry_max", "must not be below retry_step")
  end
  -- braces in a prefix must form a Redis hash tag ("{jobs}:"), or companion
  -- keys would hash to another cluster slot than their lock
  local open = o.prefix:find("{", 1, true)
  local close = open and o.prefix:find("}", open + 2, true)
  if open and not close then
    fail(name, "prefix", "has a '{' that does not open a hash tag like '{name}'")
  end
  return M.kind(name, o, given)
end

-- the pool kinds: one of sentinels / redlock / cluster, or a single server
function M.kind(name, o, given)
  local kind
  for _, k in ipairs(KINDS) do
    if o[k] then
      if kind then fail(name, k, ("cannot be combined with '%s'"):format(kind)) end
      kind = k
    end
  end
  if (o.master ~= nil) ~= (kind == "sentinels") then
    if o.master then fail(name, "master", "needs 'sentinels'") end
    fail(name, "sentinels", "needs 'master' (the name the sentinels monitor)")
  end
  if o.sentinel_password and kind ~= "sentinels" then
    fail(name, "sentinel_password", "needs 'sentinels'")
  end
  if kind and (given.url or given.host or given.port or given.path) then
    fail(name, kind, "replaces url/host/port/path: give the servers in the list")
  end
  if kind == "cluster" and o.db ~= 0 then fail(name, "db", "must be 0 on a cluster") end
  if o.replicas and (o.replicas < 0 or o.replicas > 1000) then
    fail(name, "replicas", "must be from 0 to 1000")
  end
  if o.replica_timeout and not o.replicas then fail(name, "replica_timeout", "needs 'replicas'") end
  if kind == "redlock" then
    -- each node: the pool's options, overridden by what its URL says
    local nodes = {}
    for i, url in ipairs(o.redlock) do
      local n = {}
      for k, v in pairs(o) do
        if k ~= "redlock" and k ~= "host" and k ~= "port" and k ~= "path" then n[k] = v end
      end
      local node = ("%s' node '%d"):format(name, i)
      local u = M.parse_url(url, node)
      for k, v in pairs(u) do n[k] = v end
      n.tls = merge_tls(node, u.tls, o.tls) -- the pool's 'tls' on every node
      if n.path then n.host, n.port = nil, nil else
        n.host, n.port = n.host or M.DEFAULTS.host, n.port or M.DEFAULTS.port
      end
      nodes[i] = n
    end
    o.nodes = nodes
  end
  o.kind = kind or "single"
  return o
end

-- "host:port" or "unix:/path": where a pool connects, never its secrets
function M.where(o)
  if o.kind == "sentinels" then return "sentinel:" .. o.master end
  if o.kind == "cluster" then return "cluster:" .. o.cluster[1] end
  if o.kind == "redlock" then return ("redlock:%d nodes"):format(#o.redlock) end
  if o.path then return "unix:" .. o.path end
  if o.host:find(":", 1, true) then return ("[%s]:%d"):format(o.host, o.port) end
  return ("%s:%d"):format(o.host, o.port)
end

-- a stable string of a normalized pool, to tell "same definition" apart
function M.signature(o)
  local keys = {}
  for k in pairs(o) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local v = o[k]
    if k == "nodes" or k == "log" then v = "" -- derived from 'redlock'; log: changed in place
    elseif k == "tls" then
      local t = {}
      for tk, tv in pairs(v) do t[#t + 1] = tk .. "\2" .. tv end
      table.sort(t)
      v = table.concat(t, "\1")
    elseif type(v) == "table" then v = table.concat(v, "\1") end
    parts[i] = k .. "=" .. tostring(v)
  end
  return table.concat(parts, "\0")
end

-- Validate a whole configure{} argument without changing anything.
-- 'inherited' are the defaults in force, for pools checked when the config
-- sets no defaults of its own.  Returns the pools as given (name -> a copy of
-- the spec | false) and the new defaults (or nil).
function M.check(config, inherited)
  if type(config) ~= "table" then
    error("configuration must be a table, got " .. type(config), 0)
  end
  for k in pairs(config) do
    if k ~= "pools" and k ~= "defaults" and k ~= "host" and k ~= "log" then
      error(("unknown configuration key '%s' (pools, defaults, host, log)"):format(tostring(k)), 0)
    end
  end
  if config.log ~= nil and config.log ~= false and type(config.log) ~= "function" then
    error("'log' must be a function or false, got " .. type(config.log), 0)
  end
  local defaults = config.defaults
  if defaults ~= nil then
    if type(defaults) ~= "table" then error("'defaults' must be a table, got " .. type(defaults), 0) end
    for k, v in pairs(defaults) do
      if k == "url" or k == "host" or k == "port" or k == "path" or k == "master"
        or OPTIONS[k] == "list" then
        fail("defaults", tostring(k), "belongs to a pool, not to the defaults")
      end
      if k == "log" then fail("defaults", k, "is set for every pool by configure{ log = ... }") end
      check_value("defaults", k, v)
    end
    local copy = {}
    for k, v in pairs(defaults) do copy[k] = v end
    defaults = copy
  end
  local pools = {}
  if config.pools ~= nil then
    if type(config.pools) ~= "table" then error("'pools' must be a table, got " .. type(config.pools), 0) end
    for name, spec in pairs(config.pools) do
      if type(name) ~= "string" or name == "" then
        error("pool names must be non-empty strings, got " .. tostring(name), 0)
      end
      if spec == false then
        pools[name] = false
      else
        M.pool(name, spec, defaults or inherited) -- raises on a bad pool
        if type(spec) == "table" then
          local copy = {}
          for k, v in pairs(spec) do copy[k] = v end
          spec = copy
        end
        pools[name] = spec
      end
    end
  end
  return pools, defaults
end

return M
