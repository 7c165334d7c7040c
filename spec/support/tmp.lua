-- Test support: what a test run leaves behind, which is nothing.
--
-- Every temporary directory or file the specs make is made under one root
-- per process, "${TMPDIR:-/tmp}/fluxalock-test.XXXXXX", and every process
-- they start (redis-servers, sentinels, proxies, R.spawn children) is
-- recorded with its start time.  When the Lua state that made the root is
-- closed -- busted's exit, however it was started, or a child's -- the
-- recorded processes still running, and the processes they started, are
-- stopped by pid (SIGTERM, then SIGKILL) and the root is removed.  The
-- record lives in the registry, not in this module's upvalues: busted's
-- insulation unloads and reloads the module per spec file, and the record
-- must outlive them all.
--
-- A child started by R.spawn gets FLUXALOCK_TEST_ROOT (and TMPDIR) naming
-- its parent's root: it makes its directories in there and records the
-- processes it starts in the parent's list too, so that whatever a child
-- killed by a spec had started is still stopped and removed by the parent.
--
--   local Tmp = require "support.tmp"
--   Tmp.dir("cmd") -> a new directory; Tmp.file("log") -> a new empty file
--   Tmp.track(pid) -> pid; Tmp.root() -> this process's root
--   Tmp.env() -> "FLUXALOCK_TEST_ROOT=... TMPDIR=..." for a child's command line
local KEY = "fluxalock.spec.tmp"

local S = require "support.sys"
local function sh(cmd) return (S.sh(cmd)) end
local q = S.quote

-- this process's pid (a fork made by C keeps the Lua state: compare it)
local function self_pid() return tostring(S.self_pid()) end

-- a process's start time (clock ticks after boot; field 22 of its stat),
-- nil once it is gone or a zombie: a pid with another start time is some
-- other process that reused the number
local function started(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local st = f:read("a")
  f:close()
  local state, rest = st:match("%) (%a) (.*)$")
  if not state or state == "Z" or state == "X" then return nil end
  -- fields after the state: ppid is field 4, so start time is the 19th here
  local n = 0
  for word in rest:gmatch("%S+") do
    n = n + 1
    if n == 19 then return word end
  end
end

local function alive_as(pid, start) return start ~= nil and started(pid) == start end

-- the processes below the given ones (a child's own children: the sleep a
-- shell runs, say), found through their parent pids in /proc, each with its
-- start time
local function descendants(pids)
  local children = {}
  for pid in sh("ls /proc"):gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/stat")
    local st = f and f:read("a")
    if f then f:close() end
    local ppid = st and st:match("%) %a (%d+)")
    if ppid then
      children[ppid] = children[ppid] or {}
      table.insert(children[ppid], pid)
    end
  end
  local found, queue = {}, {}
  for _, p in ipairs(pids) do queue[#queue + 1] = p end
  while #queue > 0 do
    local pid = table.remove(queue)
    for _, c in ipairs(children[pid] or {}) do
      local start = started(c)
      if start then
        found[#found + 1] = { c, start }
        queue[#queue + 1] = c
      end
    end
  end
  return found
end

-- stop what the list names (own list, and the children's file) and what
-- those started, then remove the root
local function cleanup(state)
  if self_pid() ~= state.owner then return end -- a forked copy of the state
  local procs = {}
  for _, p in ipairs(state.procs) do procs[#procs + 1] = p end
  if state.root and not state.inherited then
    local f = io.open(state.root .. "/.pids")
    if f then
      for line in f:lines() do
        local pid, start = line:match("^(%d+) (%d+)$")
        if pid then procs[#procs + 1] = { pid, start } end
      end
      f:close()
    end
  end
  local left, top = {}, {}
  for _, p in ipairs(procs) do
    if alive_as(p[1], p[2]) then
      left[#left + 1] = p
      top[#top + 1] = p[1]
    end
  end
  if #top > 0 then
    for _, p in ipairs(descendants(top)) do left[#left + 1] = p end
  end
  for _, p in ipairs(left) do
    os.execute(("kill -TERM %s 2>/dev/null; kill -CONT %s 2>/dev/null"):format(p[1], p[1]))
  end
  for _ = 1, 100 do -- up to 5 s for them to end
    local any = false
    for _, p in ipairs(left) do any = any or alive_as(p[1], p[2]) end
    if not any then break end
    os.execute("sleep 0.05")
  end
  for _, p in ipairs(left) do
    if alive_as(p[1], p[2]) then os.execute(("kill -KILL %s 2>/dev/null"):format(p[1])) end
  end
  if state.root then os.execute("rm -rf " .. q(state.root)) end
end

local state = debug.getregistry()[KEY]
if not state then
  -- __gc must be in the metatable when it is set: the state is finalized
  -- when the Lua state closes (the registry holds it until then)
  state = setmetatable({ owner = self_pid(), procs = {} }, { __gc = cleanup })
  debug.getregistry()[KEY] = state
end

local M = {}

function M.root()
  if state.root then return state.root end
  local parent = os.getenv("FLUXALOCK_TEST_ROOT")
  local base = parent or os.getenv("TMPDIR")
  if not base or base == "" then base = "/tmp" end
  local d = sh(("mktemp -d %s"):format(q(base .. (parent and "/c.XXXXXX" or "/fluxalock-test.XXXXXX")))):gsub("%s+$", "")
  assert(d ~= "", "mktemp -d failed in " .. base)
  state.root, state.inherited, state.parent = d, parent ~= nil, parent
  return d
end

-- a new directory under the root; tag names what it is for (short: Unix
-- socket paths made in it have about 100 bytes)
function M.dir(tag)
  local d = sh(("mktemp -d %s"):format(q(M.root() .. "/" .. (tag or "d") .. ".XXXXXX"))):gsub("%s+$", "")
  assert(d ~= "", "mktemp -d failed")
  return d
end

-- a new empty file under the root (instead of os.tmpname, which is /tmp's)
function M.file(tag)
  local f = sh(("mktemp %s"):format(q(M.root() .. "/" .. (tag or "f") .. ".XXXXXX"))):gsub("%s+$", "")
  assert(f ~= "", "mktemp failed")
  return f
end

-- record a process to stop at exit (it may end before; a reused pid is
-- told apart by its start time); also in tools/test.sh's list when set,
-- with its start time too: a job's list is read when the job ends, by
-- which time a pid of its first minutes may be another process's
function M.track(pid)
  pid = tonumber(pid)
  if not pid then return pid end
  local start = started(pid)
  if not start then return pid end -- gone already: nothing to stop
  state.procs[#state.procs + 1] = { tostring(pid), start }
  M.root()
  if state.parent then
    local h = io.open(state.parent .. "/.pids", "a")
    if h then h:write(pid, " ", start, "\n") h:close() end
  end
  local list = os.getenv("FLUXALOCK_TEST_PIDS")
  local h = list and io.open(list, "a")
  if h then h:write(pid, " ", start, "\n") h:close() end
  return pid
end

-- the environment a child process gets on its command line
function M.env()
  local top = state.parent or M.root()
  return ("FLUXALOCK_TEST_ROOT=%s TMPDIR=%s"):format(q(top), q(top))
end

M.quote = q
return M
