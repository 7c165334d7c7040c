-- Test support: small helpers about files and processes, with no state and
-- nothing loaded (the proxy process and support.tmp use them too).
local S = {}

-- a shell command's output, and how it ended
function S.sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

-- a word quoted for the shell
function S.quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- a file's text (nil if absent); write a file's text
function S.read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function S.write(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

-- this process's pid, from /proc (a fork made by C keeps the Lua state)
function S.self_pid()
  return tonumber(S.read("/proc/self/stat"):match("^(%d+)"))
end

-- a process that exited but was not reaped yet (a zombie) counts as gone;
-- one whose main thread has exited while other threads of it still run
-- (redis-server's background threads) does not: until the last one ends,
-- its descriptors stay open (a client connection the server was to close
-- could still take a write, and answer it with a reset)
function S.alive(pid)
  local st = pid and S.read("/proc/" .. pid .. "/stat")
  if not st then return false end
  local state = st:match("^%d+ %b() (%a)")
  if state == nil then return false end
  if state ~= "Z" and state ~= "X" then return true end
  local status = S.read("/proc/" .. pid .. "/status")
  local threads = status and tonumber(status:match("\nThreads:%s*(%d+)"))
  return threads ~= nil and threads > 1 -- its main thread is one of them
end

return S
