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
