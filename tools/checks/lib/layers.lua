-- The shape of csrc/ (docs/internals.md), checked: calls between files
-- form no circle except the two pairs that are one layer each; no file is
-- over MAX_LINES lines and no function over MAX_FUNC; only the strategy
-- files ask which kind a pool is.  Prints each breach; exits 1 on any.
-- usage: lua5.4 tools/checks/lib/layers.lua csrc/*.c
local MAX_LINES, MAX_FUNC = 620, 60
local PAIRS = { ["conn.c conn_io.c"] = true, ["net_tcp.c net_tls.c"] = true }
local STRATEGY = { ["fan.c"] = true, ["group.c"] = true, ["kind_single.c"] = true,
  ["kind_redlock.c"] = true, ["kind_cluster.c"] = true, ["kind_sentinel.c"] = true }

local bad = 0
local function breach(fmt, ...)
  bad = bad + 1
  print(("layers: " .. fmt):format(...))
end

-- comments and string literals out, line breaks kept (line numbers hold)
local function code_of(text)
  text = text:gsub("/%*.-%*/", function(c) return (c:gsub("[^\n]", " ")) end)
  text = text:gsub('"[^"\n]*"', '""')
  return text
end

local files, defs = {}, {}
for _, path in ipairs(arg) do
  local f = assert(io.open(path))
  local text = code_of(f:read("a"))
  f:close()
  local name = path:match("[^/]+$")
  files[name] = text
  -- a definition: at the start of a line, a name and its parameters, then {
  for fn in text:gmatch("\n[%w_][^\n;]-[%s%*](fl_[%w_]+)%s*%b()%s*{") do defs[fn] = name end
  for tbl in text:gmatch("\nconst fl_kind (fl_[%w_]+)") do defs[tbl] = name end
end

local edges = {}
for name, text in pairs(files) do
  edges[name] = {}
  for ident in text:gmatch("fl_[%w_]+") do
    local at = defs[ident]
    if at and at ~= name then edges[name][at] = true end
  end
end

-- circles: strongly connected components (Tarjan) of more than one file
local index, low, stack, on, n = {}, {}, {}, {}, 0
local function visit(v)
  n = n + 1
  index[v], low[v] = n, n
  stack[#stack + 1], on[v] = v, true
  for w in pairs(edges[v]) do
    if not index[w] then
      visit(w)
      low[v] = math.min(low[v], low[w])
    elseif on[w] then
      low[v] = math.min(low[v], index[w])
    end
  end
  if low[v] == index[v] then
    local comp = {}
    repeat
      local w = table.remove(stack)
      on[w] = nil
      comp[#comp + 1] = w
    until w == v
    table.sort(comp)
    if #comp > 1 and not PAIRS[table.concat(comp, " ")] then
      breach("files that call each other in a circle: %s", table.concat(comp, ", "))
    end
  end
end
local names = {}
for name in pairs(files) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  if not index[name] then visit(name) end
end

for _, name in ipairs(names) do
  local text, lineno, start, fname = files[name], 0, nil, nil
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if not start and line:match("^[%w_].*%)%s*{%s*$") and not line:match("^static const") then
      start, fname = lineno, line:match("([%w_]+)%s*%(") or line
    elseif start and line == "}" then
      if lineno - start + 1 > MAX_FUNC then
        breach("%s: %s is %d lines (at most %d)", name, fname, lineno - start + 1, MAX_FUNC)
      end
      start = nil
    end
    -- a kind test: comparing a pool's kind table
    if not STRATEGY[name] and (line:match("ops%s*[=!]=") or line:match("[=!]=%s*&fl_kind_")) then
      breach("%s:%d: a kind test outside the strategy files", name, lineno)
    end
  end
  if lineno - 1 > MAX_LINES then breach("%s is %d lines (at most %d)", name, lineno - 1, MAX_LINES) end
end

print(("layers: %d files, %d breaches"):format(#names, bad))
os.exit(bad == 0 and 0 or 1)
