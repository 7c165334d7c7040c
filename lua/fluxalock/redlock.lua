-- fluxalock.redlock: a pool over N independent Redis masters (Redlock).
-- The C core does the work (csrc/kind_redlock.c): every request goes to all nodes
-- at once and a lock counts when a majority holds it within its validity.
local core = require "fluxalock.core"

local M = {}

function M.pool(o)
  local group = core.pool(o) -- options (prefix, timeouts) of the group; never connects
  local nodes = {}
  for i, n in ipairs(o.nodes) do nodes[i] = core.pool(n) end
  group:group("redlock", nodes, ("redlock(%d nodes)"):format(#nodes))
  return group
end

return M
