-- The documentation's programs run as written.  A Lua block of README.md or
-- docs/*.md that is preceded by a line
--
--   <!-- run -->                                  (exit 0, nothing on stderr)
--   <!-- run: output matches "<Lua pattern>" -->  (and stdout matches it)
--
-- is run in its own lua5.4 process, with `fluxalock` already required and
-- FLUXALOCK_URL naming a private redis-server, from the checkout's root as
-- the README tells a user to.  The host examples docs/hosts.md links to run
-- the same way.  Each of these programs leaves no lock behind.
local R = require "support.redis"

local root = R.sh("pwd"):gsub("%s+$", "")

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

-- the marked blocks of one file: { line = n, expect = pattern or nil, code = text }
local function runnable(path)
  local blocks, lines = {}, {}
  for l in (read(path) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  for i, l in ipairs(lines) do
    local marker = l:match("^<!%-%- run(.-) %-%->$")
    if marker then
      assert(lines[i + 1] == "```lua", ("%s:%d: a run marker must be followed by a ```lua block"):format(path, i))
      local quoted = marker:match('^: output matches (%b"")$')
      assert(marker == "" or quoted, ("%s:%d: unknown run marker"):format(path, i))
      local code, j = {}, i + 2
      while lines[j] ~= "```" do
        assert(lines[j], ("%s:%d: the block never ends"):format(path, i))
        code[#code + 1] = lines[j]
        j = j + 1
      end
      -- the pattern is written as in Lua source ("\n" for a newline)
      local expect = quoted and assert(load("return " .. quoted))()
      blocks[#blocks + 1] = { line = i + 1, expect = expect, code = table.concat(code, "\n") .. "\n" }
    end
  end
  return blocks
end

-- run a Lua file as the docs tell a user to -> stdout, stderr, exit code
local function run(file, url)
  local err = R.tmpfile()
  local cmd = ("cd %s && FLUXALOCK_URL=%s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='./?.so;;' "
    .. "lua5.4 -e 'fluxalock = require \"fluxalock\"' %s 2>%s; echo \"exit=$?\"")
    :format(R.quote(root), R.quote(url), R.quote(file), R.quote(err))
  local out = R.sh(cmd)
  local stderr = read(err)
  os.remove(err)
  return out:gsub("exit=%d+\n$", ""), stderr, tonumber(out:match("exit=(%d+)\n$"))
end

local files = { "README.md" }
for f in R.sh("ls docs/*.md"):gmatch("[^\n]+") do files[#files + 1] = f end

describe("docs", function()
  local server

  R.setup({ module = false }, function(e) server = e.server end)

  local function check(name, file, expect)
    local out, stderr, code = run(file, server.url)
    assert.are.equal("", stderr, name)
    assert.are.equal(0, code, name)
    if expect then assert.matches(expect, out, nil, false, name) end
    -- each program released what it obtained: no lock key is left, only
    -- fluxalock's fence counters and wake-up lists
    for key in server:cli("--scan"):gmatch("[^\n]+") do
      assert.matches("fluxalock:", key, nil, true, name .. " left " .. key)
    end
  end

  for _, path in ipairs(files) do
    for _, block in ipairs(runnable(path)) do
      it(("%s:%d runs"):format(path, block.line), function()
        local file = R.tmpfile()
        local f = assert(io.open(file, "w"))
        f:write(block.code)
        f:close()
        check(path .. ":" .. block.line, file, block.expect)
        os.remove(file)
      end)
    end
  end

  it("docs/hosts.md's cqueues program is examples/cqueues_host.lua", function()
    local block = runnable("docs/hosts.md")
    assert.are.equal(read("examples/cqueues_host.lua"), block[#block].code)
  end)

  for _, name in ipairs { "cqueues_host", "luv_host" } do
    it("examples/" .. name .. ".lua runs its 50 coroutines with the loop never blocked", function()
      check(name, root .. "/examples/" .. name .. ".lua", "^50 jobs done, ticker ran [1-9]%d* times meanwhile\n$")
    end)
  end

  -- GitHub's anchor of a heading: lower case, punctuation dropped, - for spaces
  local function anchors(path)
    local set = {}
    for h in ("\n" .. read(path)):gmatch("\n#+ ([^\n]+)") do
      set[h:lower():gsub("[^%w%- ]", ""):gsub(" ", "-")] = true
    end
    return set
  end

  it("every relative link points at a file that exists, and at a heading it has", function()
    for _, path in ipairs(files) do
      local dir = path:match("^(.*/)") or ""
      for target in read(path):gmatch("%]%(([^)]+)%)") do
        if not target:match("^%a+:") then
          local file, anchor = target:match("^([^#]*)#?(.*)$")
          file = file == "" and path or dir .. file
          local f = io.open(file)
          assert.truthy(f, path .. ": " .. target .. ": no such file")
          f:close()
          if anchor ~= "" then
            assert.truthy(anchors(file)[anchor], path .. ": " .. target .. ": no such heading")
          end
        end
      end
    end
  end)

  it("every docs/*.md file has a what's-here top and is linked from the README", function()
    local readme = read("README.md")
    for i = 2, #files do
      local text = read(files[i])
      assert.matches("\n# [^\n]+\n\nWhat's here: ", text, nil, false, files[i])
      assert.truthy(readme:find("](" .. files[i] .. ")", 1, true), files[i] .. " is not linked")
    end
  end)
end)
