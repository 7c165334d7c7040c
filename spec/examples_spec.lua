-- The examples as a user runs them (lua5.4 examples/x.lua, the default pool
-- from FLUXALOCK_URL): each prints exactly the reference's lines, exits 0,
-- and leaves no key but the fence counter behind; with Redis down each one
-- exits non-zero at once with the "fluxalock: ..." message.
--
-- With FLUXALOCK_EXAMPLES_TREE set to a LuaRocks tree (tools/checks/install.sh
-- installs the rockspec into one), the examples load fluxalock from that tree
-- alone (LUA_PATH and LUA_CPATH name nothing else) and run in a directory
-- outside the checkout.
local R = require "support.redis"

local root = R.sh("pwd"):gsub("%s+$", "")
local tree = os.getenv("FLUXALOCK_EXAMPLES_TREE")

-- where an example runs, and its LUA_PATH and LUA_CPATH
local cwd, lua_path, lua_cpath = root, root .. "/lua/?.lua;;", root .. "/?.so;;"
if tree then
  cwd = R.tmpdir("examples")
  lua_path = tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua"
  lua_cpath = tree .. "/lib/lua/5.4/?.so"
end

-- fenced_store.lua also needs LuaSocket: in a tree, the paths gain the
-- directories of its two files (socket.lua and socket/core.so) and no more
local function with_socket(path, cpath)
  if not tree then return path, cpath end
  local lua_file = assert(package.searchpath("socket", package.path))
  local so_file = assert(package.searchpath("socket.core", package.cpath))
  return path .. ";" .. lua_file:gsub("socket%.lua$", "?.lua"), cpath .. ";" .. so_file:gsub("socket/core%.so$", "?.so")
end

-- a Lua command line in the examples' environment -> stdout, stderr, exit code
local function lua(args, url, socket)
  local err = R.tmpfile()
  local path, cpath = lua_path, lua_cpath
  if socket then path, cpath = with_socket(path, cpath) end
  local cmd = ("cd %s && FLUXALOCK_URL=%s LUA_PATH=%s LUA_CPATH=%s lua5.4 %s 2>%s; echo \"exit=$?\"")
    :format(R.quote(cwd), R.quote(url), R.quote(path), R.quote(cpath), args, R.quote(err))
  local out = R.sh(cmd)
  local f = io.open(err)
  local stderr = f and f:read("a") or ""
  if f then f:close() end
  os.remove(err)
  local code = tonumber(out:match("exit=(%d+)\n$"))
  return out:gsub("exit=%d+\n$", ""), stderr, code
end

-- run an example in its own process, as a user does
local function run(name, url)
  local script = tree and R.quote(root .. "/examples/" .. name .. ".lua") or "examples/" .. name .. ".lua"
  return lua(script, url, name == "fenced_store")
end

local function lines(t) return table.concat(t, "\n") .. "\n" end

describe("examples", function()
  local server

  R.setup({ module = false, teardown = function() if tree then os.remove(cwd) end end },
    function(e) server = e.server end)

  if tree then
    it("loads fluxalock and its C core from the tree", function()
      local out, stderr, code = lua([[-e 'print(package.searchpath("fluxalock", package.path))
        print(package.searchpath("fluxalock.core", package.cpath)) print(require("fluxalock")._VERSION)']],
        server.url)
      assert.are.equal("", stderr)
      assert.are.equal(0, code)
      assert.are.equal(tree .. "/share/lua/5.4/fluxalock.lua\n" .. tree .. "/lib/lua/5.4/fluxalock/core.so\n"
        .. require("fluxalock")._VERSION .. "\n", out)
    end)
  end

  local expected = {
    non_blocking = { "GETTING LOCK A", "GETTING LOCK B", "GOT LOCK A",
      "UNABLE TO GET LOCK B", "RELEASING LOCK A" },
    waiting = { "GETTING LOCK A", "GETTING LOCK B", "GOT LOCK A",
      "RELEASING LOCK A", "GOT LOCK B", "RELEASING LOCK B" },
    ttl_refresh = { "GOT LOCK FOR 5 SECONDS", "WILL EXPIRE IN 4 SECONDS",
      "WILL EXPIRE IN 3 SECONDS", "WILL EXPIRE IN 5 SECONDS" },
    scoped = { "GOT LOCK scoped_job", "JOB FAILED: the job went wrong",
      "fluxalock.Lock: scoped_job (released)", "LOCK IS FREE AGAIN" },
    renewed = { "GOT LOCK renewed_job FOR 1 SECOND, RENEWED",
      "WORKED 2.5 SECONDS, STILL HELD: true", "RELEASED" },
  }

  local KEY = { non_blocking = "test_lock", waiting = "test_lock", ttl_refresh = "test",
    scoped = "scoped_job", renewed = "renewed_job" }

  for _, name in ipairs { "non_blocking", "waiting", "ttl_refresh", "scoped", "renewed" } do
    it(name .. ".lua prints the reference's lines and releases its lock", function()
      local out, stderr, code = run(name, server.url)
      -- (its stderr in the message: beside another make test, two examples
      -- once stopped early, and only their stdout was shown)
      assert.are.equal(lines(expected[name]), out, "stderr: " .. stderr)
      assert.are.equal("", stderr)
      assert.are.equal(0, code)
      -- released, not left to expire (only fluxalock's own keys remain:
      -- the fence counter, and a wake-up list living 1 s)
      assert.are.equal("0", server:cli("EXISTS", KEY[name]))
    end)
  end

  it("prometheus.lua prints its locker's counters in the exposition format", function()
    local out, stderr, code = run("prometheus", server.url)
    assert.are.equal("", stderr)
    assert.are.equal(0, code)
    assert.truthy(out:find('\nfluxalock_obtained_total{pool="default"} 1\n', 1, true), out)
    assert.truthy(out:find('\nfluxalock_released_total{pool="default"} 1\n', 1, true), out)
    assert.truthy(out:find("# TYPE fluxalock_obtained_total counter\n", 1, true), out)
    assert.are.equal("0", server:cli("EXISTS", "prometheus-example"))
  end)

  it("fenced_store.lua: the store refuses the late write of a holder whose lease ran out", function()
    local out, stderr, code = run("fenced_store", server.url)
    assert.are.equal("", stderr)
    assert.are.equal(0, code)
    local a, b = out:match('^A READ "" WITH FENCE (%d+)\nB WROTE WITH FENCE (%d+)\n')
    assert.truthy(a, out)
    assert.is_true(tonumber(b) > tonumber(a))
    assert.truthy(out:find(("\nA'S LATE WRITE REFUSED: stale fence %s: the store has seen fence %s, "
      .. "its last write had fence %s\nA RELEASES: false\nRECORD: \"written by B\"\n$"):format(a, b, b)), out)
    assert.are.equal("0", server:cli("EXISTS", "fenced-example"))
    assert.are.equal("0", server:cli("EXISTS", "fenced-example:record"))
  end)

  it("with Redis down each example fails at once with the fluxalock message", function()
    local _, url = R.free_port()
    for _, name in ipairs { "non_blocking", "waiting", "ttl_refresh", "scoped", "renewed", "prometheus",
                            "fenced_store" } do
      local t0 = R.now()
      local _, stderr, code = run(name, url)
      assert.are.equal(1, code, name)
      assert.matches("fluxalock: connect 127%.0%.0%.1:%d+: Connection refused", stderr)
      assert.is_true(R.now() - t0 < 10, name .. " did not hang")
    end
  end)
end)
