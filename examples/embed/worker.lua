-- A coroutine of the embed example: takes locks on a few shared keys in
-- turn, holding each across a yield to the C loop.  '...' is (copy, script).
-- luacheck: read globals embed
local copy = ...
local locker = require("fluxalock").locker()

for round = 1, 5 do
  local key = "embed:" .. (copy + round) % 4
  local lock <close>, err = locker:obtain(key, 5, 4)
  if not lock then error(key .. ": " .. tostring(err)) end
  embed.enter(key)
  embed.sleep(0.002) -- other coroutines run meanwhile
  embed.leave(key)
end -- each <close> releases through the host too
