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

-- A luv handle that a spec closed (a wait whose coroutine was closed, say)
-- is freed by libuv only when the loop runs again (its close callback); in
-- a program the loop goes on, but the last spec file of a busted process
-- that used luv may never run it again, and the handle's memory would then
-- be reported as a leak at exit under ASan (160 bytes, in luv.so).  After
-- each file, one turn of the loop without waiting frees them.
local uv = require "luv"
require("busted").subscribe({ "file", "end" }, function()
  pcall(uv.run, "nowait")
  return nil, true
end)
