-- The shape of csrc/ (docs/internals.md), checked: calls between files go
-- down the layers of docs/internals.md's table, never up, and form no
-- circle except the two pairs that are one layer each; no file is
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

-- the layers, top to bottom: the table under "## Layers" in
-- docs/internals.md (its one description), files in backquotes in the
-- second column.  A call goes to the file's own row or a row below it
local LAYERS_DOC = "docs/internals.md"
local row_of, rows = {}, {}
do
  local f = assert(io.open(LAYERS_DOC))
  local doc = f:read("a")
  f:close()
  local section = doc:match("\n## Layers\n(.-)\n## ") or ""
  for line in section:gmatch("[^\n]+") do
    local name, cells = line:match("^| ([^|]-) | ([^|]+) |")
    if name and name ~= "layer" and not name:match("^%-") then
      rows[#rows + 1] = name
      for file in cells:gmatch("`([%w_]+%.c)`") do row_of[file] = #rows end
    end
  end
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

-- direction: no call from a file to a file of a row above its own
if #rows == 0 then breach("no layer table under '## Layers' in %s", LAYERS_DOC) end
do
  local sorted = {}
  for name in pairs(files) do sorted[#sorted + 1] = name end
  table.sort(sorted)
  for _, name in ipairs(sorted) do
    if not row_of[name] then
      breach("%s is in no layer of %s", name, LAYERS_DOC)
    else
      local callees = {}
      for at in pairs(edges[name]) do callees[#callees + 1] = at end
      table.sort(callees)
      for _, at in ipairs(callees) do
        if row_of[at] and row_of[at] < row_of[name] then
          local why = {}
          for ident in files[name]:gmatch("fl_[%w_]+") do
            if defs[ident] == at and not why[ident] then why[#why + 1] = ident why[ident] = true end
          end
          breach("%s (%s) calls up into %s (%s): %s", name, rows[row_of[name]], at,
            rows[row_of[at]], table.concat(why, ", "))
        end
      end
    end
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
