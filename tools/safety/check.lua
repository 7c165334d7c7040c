-- The safety checker: reads the history of a fault schedule
-- (tools/safety/run.lua) and says what the locks and the fenced store let
-- through.  A history is text, one record a line, "key=value" words:
--
--   op=leg leg=<name> store=fenced|force host=proc|luv workers=N replicas=0|1
--   op=end leg seconds      (how long the leg ran)
--   op=write leg w fence renew obtained read rseq rvalue start finish write wseq value
--        one round of a worker: the lock obtained at 'obtained' with 'fence';
--        the store read (read=accepted|refused|error, rseq its order in the
--        store, rvalue what it read); the write attempt from 'start' to
--        'finish' (write=accepted|refused|error|skipped, wseq, value written)
--   op=fault leg kind=stop|kill|cut|delay|failover at dur
--   op=probe leg replicas=0|1 acked=0|1 lost=0|1
--        a lock obtained just before a failover (acked: the obtain returned
--        it), and whether another locker could take it on the promoted master
--        within its ttl (lost)
--
-- Times are seconds on the machine's monotonic clock (the same for every
-- process of a run).  Used as a module (check.parse, check.run, check.table)
-- or as a program: lua5.4 tools/safety/check.lua <history> (exit 1 on a
-- safety failure).
local M = {}

-- one line -> a record (numbers converted), or nil for a blank line
function M.parse_line(line)
  local r = {}
  for k, v in line:gmatch("(%w+)=(%S*)") do r[k] = math.tointeger(tonumber(v)) or tonumber(v) or v end
  if next(r) == nil then return nil end
  return r
end

function M.parse(text)
  local list = {}
  for line in text:gmatch("[^\n]+") do list[#list + 1] = M.parse_line(line) end
  return list
end

-- pairs of critical sections of different workers that overlapped in time:
-- each worker believed it held the lock from 'obtained' to the end of its
-- write attempt
local function overlaps(writes)
  local s = {}
  for _, w in ipairs(writes) do
    if w.obtained and w.finish then s[#s + 1] = w end
  end
  table.sort(s, function(a, b) return a.obtained < b.obtained end)
  local n = 0
  for i = 1, #s do
    for j = i + 1, #s do
      if s[j].obtained >= s[i].finish then break end
      if s[j].w ~= s[i].w then n = n + 1 end
    end
  end
  return n
end

-- what the store took, in its own order: a write is stale when the store had
-- already taken a read or write of a later grant (a higher fence), or a write
-- of the same fence by another worker; a write lost an update when what it
-- wrote was not one more than the value the store's previous write left
local function store_order(writes)
  local ops = {}
  for _, w in ipairs(writes) do
    if w.read == "accepted" and w.rseq then ops[#ops + 1] = { seq = w.rseq, fence = w.fence, w = w.w } end
    if w.write == "accepted" and w.wseq then
      ops[#ops + 1] = { seq = w.wseq, fence = w.fence, w = w.w, write = true, value = w.value }
    end
  end
  table.sort(ops, function(a, b) return a.seq < b.seq end)
  local stale, lost = 0, 0
  local highest, wrote_fence, wrote_by, last_value = 0, nil, nil, 0
  for _, op in ipairs(ops) do
    if op.write then
      if op.fence < highest or (op.fence == wrote_fence and op.w ~= wrote_by) then stale = stale + 1 end
      if op.value ~= last_value + 1 then lost = lost + 1 end
      last_value, wrote_fence, wrote_by = op.value, op.fence, op.w
    end
    if op.fence > highest then highest = op.fence end
  end
  return stale, lost
end

local KINDS = { "stop", "kill", "cut", "delay", "failover" }
M.KINDS = KINDS

-- check.run(records) -> report, failures
-- report: a list of legs in their order, each { leg, store, host, replicas,
-- workers, seconds, rounds, accepted, refused, errors, skipped, faults = {kind = n},
-- overlaps, stale, lost_updates, probes, probes_lost }; failures: a list of
-- sentences (empty when the history is safe)
function M.run(records)
  local legs, by = {}, {}
  local function leg(name)
    if not by[name] then
      by[name] = { leg = name, writes = {}, faults = {}, probes = 0, probes_lost = 0,
                   rounds = 0, accepted = 0, refused = 0, errors = 0, skipped = 0 }
      legs[#legs + 1] = by[name]
    end
    return by[name]
  end
  for _, r in ipairs(records) do
    local l = leg(r.leg or "?")
    if r.op == "leg" then
      l.store, l.host, l.workers, l.replicas, l.seconds = r.store, r.host, r.workers, r.replicas, r.seconds
    elseif r.op == "end" then
      l.seconds = r.seconds -- as long as it really ran
    elseif r.op == "write" then
      l.writes[#l.writes + 1] = r
      l.rounds = l.rounds + 1
      if r.write == "accepted" then l.accepted = l.accepted + 1
      elseif r.write == "refused" or r.read == "refused" then l.refused = l.refused + 1
      elseif r.write == "error" or r.read == "error" then l.errors = l.errors + 1
      elseif r.write == "skipped" then l.skipped = l.skipped + 1 end
    elseif r.op == "fault" then
      l.faults[r.kind] = (l.faults[r.kind] or 0) + 1
    elseif r.op == "probe" then
      if r.acked == 1 then l.probes = l.probes + 1 end
      if r.lost == 1 then l.probes_lost = l.probes_lost + 1 end
      l.replicas, l.failovers = r.replicas, true
    end
  end
  local failures = {}
  for _, l in ipairs(legs) do
    l.overlaps = overlaps(l.writes)
    l.stale, l.lost_updates = store_order(l.writes)
    l.writes = nil
    if l.store ~= "force" then
      if l.stale > 0 then
        failures[#failures + 1] = ("%s: the fenced store took %d stale write(s)"):format(l.leg, l.stale)
      end
      if l.lost_updates > 0 then
        failures[#failures + 1] = ("%s: the fenced store lost %d update(s)"):format(l.leg, l.lost_updates)
      end
    end
    if l.replicas == 1 and l.probes_lost > 0 then
      failures[#failures + 1] = ("%s: %d lock(s) acknowledged by a replica were lost by a failover")
        :format(l.leg, l.probes_lost)
    end
  end
  return legs, failures
end

-- the report as a markdown table
function M.table(legs)
  local out = {
    "| leg | store | workers | seconds | rounds | writes taken | refused | store errors "
      .. "| not written: held() false | faults | overlapping pairs | stale writes taken | lost updates "
      .. "| failover: locks acked / lost |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  }
  for _, l in ipairs(legs) do
    local f = {}
    for _, k in ipairs(KINDS) do
      if l.faults[k] then f[#f + 1] = k .. " " .. l.faults[k] end
    end
    local probes = l.failovers and ("%d / %d"):format(l.probes, l.probes_lost) or "–"
    out[#out + 1] = ("| %s | %s | %s | %s | %d | %d | %d | %d | %d | %s | %d | %d | %d | %s |"):format(
      l.leg, l.store or "?", tostring(l.workers or "?") .. (l.host == "luv" and " coroutines" or ""),
      l.seconds and ("%.0f"):format(l.seconds) or "?", l.rounds, l.accepted, l.refused, l.errors, l.skipped,
      #f > 0 and table.concat(f, ", ") or "none", l.overlaps, l.stale, l.lost_updates, probes)
  end
  return table.concat(out, "\n") .. "\n"
end

if ... ~= "safety.check" then
  local path = assert(arg and arg[1], "usage: lua5.4 tools/safety/check.lua <history>")
  local f = assert(io.open(path))
  local legs, failures = M.run(M.parse(f:read("a")))
  f:close()
  io.write(M.table(legs))
  for _, msg in ipairs(failures) do io.stderr:write("UNSAFE: ", msg, "\n") end
  os.exit(#failures == 0 and 0 or 1)
end

return M
