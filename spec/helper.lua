-- Loaded once by busted before any spec file (.busted 'helper').
--
-- busted insulates each file: modules a file loads are unloaded after it,
-- so the next file that requires them runs their luaopen again.  For luv
-- that is harmful: a second luaopen_luv in one process replaces the first
-- module's loop context, whose finaliser then closes libuv's default loop
-- under the new one (a later uv.new_poll crashed in uv_poll_init once
-- several spec files used luv in the busted process).  A program loads luv
-- once; loaded here, before the first file, it stays loaded for all.
require "luv"
require "cqueues"

-- What a spec file leaves in the luv loop is closed when the file ends.
-- The next file loads fluxalock again (busted's insulation), and its luv
-- adapter knows nothing of the handles the last one left: the on_lost
-- watcher's poll handle on the renewal descriptor, say, which stays open
-- while a lock is watched.  A uv.new_poll on a descriptor that a poll
-- handle still watches fails with EEXIST, and luv 1.44 then loses the 160
-- bytes it allocated for the new handle: a leak report under ASan at the
-- end of a busted process that ran the files in that order.  A closed
-- handle is freed by libuv only when the loop runs again (its close
-- callback), so the loop turns once more without waiting; in a program
-- the loop goes on, but the last file of a busted process may never run
-- it again.
local uv = require "luv"
require("busted").subscribe({ "file", "end" }, function()
  collectgarbage()
  collectgarbage()
  pcall(uv.run, "nowait")
  uv.walk(function(h)
    if not h:is_closing() then h:close() end
  end)
  pcall(uv.run, "nowait")
  return nil, true
end)
