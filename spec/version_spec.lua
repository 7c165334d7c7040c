-- One version everywhere a user or LuaRocks reads it: fluxalock._VERSION
-- (from the C core), the release rockspec, and the newest release in
-- CHANGELOG.md; the scm rockspec builds exactly what the release one does,
-- and both install every module of the checkout.
local fluxalock = require "fluxalock"

local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  table.sort(t)
  return t
end

-- a rockspec is Lua assignments: run it in an empty environment
local function rockspec(path)
  local env = {}
  assert(loadfile(path, "t", env))()
  return env
end

local function version_key(v)
  local a, b, c = v:match("^(%d+)%.(%d+)%.(%d+)$")
  return tonumber(a) * 1e6 + tonumber(b) * 1e3 + tonumber(c)
end

local VERSION = fluxalock._VERSION:match("^fluxalock (%d+%.%d+%.%d+)$")

describe("version", function()
  it("_VERSION is 'fluxalock' and a semantic version", function()
    assert.is_string(VERSION, fluxalock._VERSION)
  end)

  it("the newest release rockspec is this version's, and each names itself", function()
    local newest
    for _, file in ipairs(lines_of("ls rockspecs")) do
      local v, rev = file:match("^fluxalock%-(.+)%-(%d+)%.rockspec$")
      assert.is_string(v, "rockspecs/" .. file .. ": not fluxalock-<version>-<revision>.rockspec")
      local spec = rockspec("rockspecs/" .. file)
      assert.are.equal("fluxalock", spec.package, file)
      assert.are.equal(v .. "-" .. rev, spec.version, file)
      if v ~= "scm" and (not newest or version_key(v) > version_key(newest)) then newest = v end
    end
    assert.are.equal(VERSION, newest)
  end)

  it("CHANGELOG.md's newest release is this version", function()
    local newest
    for l in io.lines("CHANGELOG.md") do
      newest = newest or l:match("^## %[(%d+%.%d+%.%d+)%]")
    end
    assert.are.equal(VERSION, newest)
  end)

  it("the scm rockspec differs from the release one only in version and source", function()
    local release = rockspec("rockspecs/fluxalock-" .. VERSION .. "-1.rockspec")
    local scm = rockspec("rockspecs/fluxalock-scm-1.rockspec")
    for _, t in ipairs { release, scm } do t.version, t.source = nil, nil end
    assert.are.same(release, scm)
    assert.are.equal("MIT", release.description.license)
    assert.are.same({ type = "busted" }, release.test)
  end)

  it("the rockspec installs every Lua module and builds every C source of the checkout", function()
    local spec = rockspec("rockspecs/fluxalock-" .. VERSION .. "-1.rockspec")
    local lua_files, modules = {}, {}
    for name, m in pairs(spec.build.modules) do
      if type(m) == "string" then -- a Lua module: its name is its path below lua/
        assert.are.equal("lua/" .. name:gsub("%.", "/") .. ".lua", m)
        lua_files[#lua_files + 1] = m
      else
        modules[#modules + 1] = name
      end
    end
    table.sort(lua_files)
    assert.are.same(lines_of("find lua -name '*.lua'"), lua_files)
    table.sort(modules)
    assert.are.same({ "fluxalock.core", "fluxalock.proc" }, modules)
    local sources = {}
    for _, name in ipairs(modules) do
      for _, src in ipairs(spec.build.modules[name].sources) do sources[#sources + 1] = src end
    end
    table.sort(sources)
    assert.are.same(lines_of("ls csrc/*.c"), sources)
  end)
end)
