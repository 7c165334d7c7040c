-- Benchmark (not a test): W1 (uncontended obtain+release pairs) and W3
-- (handoff: a waiter's obtain after the holder's release, in another
-- process) over plain TCP and over TLS, side by side in one run, against
-- two redis-servers on loopback (one with --tls-port only), started here
-- and stopped by PID.  The certificates are the specs' (spec/support/tls.lua,
-- made with openssl into a temporary directory).
--
--   LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' LUA_CPATH='./?.so;;' \
--     lua5.4 bench/tls.lua
--
-- Environment: as bench/w13.lua (BENCH_SECONDS, BENCH_HANDOFFS), which
-- runs the workloads.
local R = require "support.redis"
local T = require "support.tls"

local certs = T.certs()
local side = R.start()
local plain = R.start()
local tls = T.start()

local kinds = {
  { "plain TCP", { url = plain.url } },
  { "TLS", { url = tls.tls_url, tls = { ca_file = certs.ca } } },
}

dofile("bench/w13.lua")(side, kinds, "transport")

tls:stop()
plain:stop()
side:stop()
