-- examples/prometheus.lua: its output, line by line, against the grammar of
-- Prometheus' text exposition format 0.0.4, and against the lockers' stats.
local R = require "support.redis"

local fluxalock = require "fluxalock"
local render = dofile "examples/prometheus.lua"

local NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*"
local LABEL = "[a-zA-Z_][a-zA-Z0-9_]*"

-- a float as Go's strconv.ParseFloat reads it, or +Inf/-Inf/NaN
local function is_value(s)
  if s == "+Inf" or s == "-Inf" or s == "NaN" then return true end
  return s:match("^[+-]?%d+%.?%d*[eE]?[+-]?%d*$") ~= nil and tonumber(s) ~= nil
end

-- '{a="x",b="y"}' -> { a = "x", b = "y" } (values unescaped), or raise
local function labels(s)
  local t, pos = {}, 2
  assert(s:sub(1, 1) == "{", "labels must start with {")
  while s:sub(pos, pos) ~= "}" do
    local name = s:match("^" .. LABEL, pos)
    assert(name, "bad label name at " .. pos .. " in " .. s)
    pos = pos + #name
    assert(s:sub(pos, pos + 1) == '="', "label needs =\" in " .. s)
    pos = pos + 2
    local v = {}
    while true do
      local c = s:sub(pos, pos)
      assert(c ~= "" and c ~= "\n", "unterminated label value in " .. s)
      if c == '"' then break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        assert(e == "\\" or e == '"' or e == "n", "bad escape \\" .. e .. " in " .. s)
        v[#v + 1] = e == "n" and "\n" or e
        pos = pos + 2
      else
        v[#v + 1] = c
        pos = pos + 1
      end
    end
    assert(t[name] == nil, "label " .. name .. " twice")
    t[name] = table.concat(v)
    pos = pos + 1
    local sep = s:sub(pos, pos)
    if sep == "," then pos = pos + 1 else assert(sep == "}", "expected , or } in " .. s) end
  end
  assert(pos == #s, "text after } in " .. s)
  return t
end

-- parse a whole exposition; raise at the first line off the grammar.
-- -> families: name -> { type =, help =, samples = { {labels =, value =} } }
local function parse(text)
  assert(text:sub(-1) == "\n", "the text must end with a line feed")
  local families, order, current = {}, {}, nil
  local function family(name)
    if not families[name] then
      families[name] = { samples = {} }
      order[#order + 1] = name
    end
    -- a family's lines are contiguous: no going back to an earlier one
    assert(current == nil or current == name or #families[name].samples == 0
      and families[name].type == nil and families[name].help == nil, "family " .. name .. " split")
    current = name
    return families[name]
  end
  for line in text:gmatch("([^\n]*)\n") do
    assert(line ~= "", "empty line")
    if line:sub(1, 1) == "#" then
      local name, doc = line:match("^# HELP (" .. NAME .. ") (.*)$")
      if name then
        local f = family(name)
        assert(f.help == nil, "HELP twice for " .. name)
        -- only \\ and \n are escapes in a HELP text
        assert(not doc:gsub("\\[\\n]", ""):find("\\", 1, true), "bad escape in HELP: " .. doc)
        f.help = doc
      else
        local tname, kind = line:match("^# TYPE (" .. NAME .. ") (%a+)$")
        assert(tname, "comment line is neither HELP nor TYPE: " .. line)
        assert(({ counter = true, gauge = true, histogram = true, summary = true, untyped = true })[kind],
          "unknown type " .. kind)
        local f = family(tname)
        assert(f.type == nil, "TYPE twice for " .. tname)
        assert(#f.samples == 0, "TYPE after a sample of " .. tname)
        f.type = kind
      end
    else
      local name, rest = line:match("^(" .. NAME .. ")(.*)$")
      assert(name, "bad metric name: " .. line)
      local lab, value = rest:match("^(%b{}) (%S+)$")
      if not lab then value = rest:match("^ (%S+)$") end
      assert(value, "bad sample line: " .. line)
      assert(is_value(value), "bad value " .. value .. " in " .. line)
      local f = family(name)
      f.samples[#f.samples + 1] = { labels = lab and labels(lab) or {}, value = tonumber(value) }
    end
  end
  return families, order
end

describe("examples/prometheus.lua", function()
  local server
  local WEIRD = 'we"ird\\pool\nname'

  lazy_setup(function()
    server = R.start()
    fluxalock.configure { pools = { prom_a = server.url, [WEIRD] = server.url } }
  end)
  lazy_teardown(function()
    fluxalock.configure { pools = { prom_a = false, [WEIRD] = false } }
    if server then server:stop() end
  end)

  it("the parser in this spec rejects what the format forbids", function()
    for _, bad in ipairs {
      "fluxalock_x_total 1",                       -- no final line feed
      "1bad 1\n",                                   -- metric name
      'm{pool="a"b"} 1\n',                          -- raw quote in a value
      'm{pool="a\\tb"} 1\n',                        -- unknown escape
      "m{pool=\"a\nb\"} 1\n",                       -- raw line feed
      "m{pool=\"a\"} one\n",                        -- value
      "# TYPE m counter\n# TYPE m counter\nm 1\n",  -- TYPE twice
      "m 1\n# TYPE m counter\n",                    -- TYPE after a sample
      "# TYPE a counter\na 1\n# TYPE b counter\nb 1\na 2\n", -- family split
      "# HELLO m x\n",                              -- comment kind
    } do
      assert.has_error(function() parse(bad) end)
    end
    assert.has_no.errors(function() parse('# HELP m a \\\\ b\n# TYPE m counter\nm{a="\\"\\n\\\\"} 1.5e-3\n') end)
  end)

  it("renders every counter of every locker, valid line by line, names escaped", function()
    local a, w = fluxalock.locker("prom_a"), fluxalock.locker(WEIRD)
    local lock = assert(a:obtain("prom", 5))
    assert.is_nil(a:obtain("prom", 5, 0.02))
    assert.is_true(lock:release())
    assert(w:obtain("prom", 5)):release()
    local text = render { a, w }
    local families, order = parse(text)
    -- every stats key is a family with HELP and TYPE, one sample per locker
    local sa, sw = a:stats(), w:stats()
    local n = 0
    for k in pairs(sa) do
      n = n + 1
      local name = k == "wait_max" and "fluxalock_wait_max_seconds"
        or k == "wait_seconds" and "fluxalock_wait_seconds_total" or "fluxalock_" .. k .. "_total"
      local f = families[name]
      assert.truthy(f, name)
      assert.truthy(f.help, name)
      assert.equal(k == "wait_max" and "gauge" or "counter", f.type)
      assert.equal(2, #f.samples)
      assert.same({ pool = "prom_a" }, f.samples[1].labels)
      assert.same({ pool = WEIRD }, f.samples[2].labels)
      assert.equal(sa[k], f.samples[1].value)
      assert.equal(sw[k], f.samples[2].value)
    end
    assert.equal(n, #order)
    assert.truthy(text:find('fluxalock_obtained_total{pool="prom_a"} 1\n', 1, true))
    assert.truthy(text:find('fluxalock_not_obtained_total{pool="prom_a"} 1\n', 1, true))
    assert.truthy(text:find('{pool="we\\"ird\\\\pool\\nname"}', 1, true))
  end)

  it("takes one locker as well, and a pool kind's extra keys become families", function()
    local text = render(fluxalock.locker("prom_a"))
    local families = parse(text)
    assert.equal(1, #families.fluxalock_obtained_total.samples)
    -- a Sentinel pool's 'failovers' (here from a locker that was never used)
    local s = fluxalock.locker { sentinels = { "127.0.0.1:1" }, master = "m" }
    families = parse(render { s })
    assert.equal(0, families.fluxalock_failovers_total.samples[1].value)
    assert.equal("counter", families.fluxalock_failovers_total.type)
  end)
end)
