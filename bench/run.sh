#!/bin/sh
# make bench: run the workloads (bench/run.lua prints one markdown table,
# also kept in $BENCH_OUT/table.md), then plot the W3 handoff latencies
# (bench/plot.gp -> $BENCH_OUT/handoff.png; docs/handoff.png is a copy),
# then W1/W3 for the pool kinds (bench/poolkinds.lua -> poolkinds.md),
# then what 100 renewed locks cost (bench/renew.lua -> renew.md), then how
# soon on_lost runs under a host (bench/lost.lua -> lost.md), then W1/W3
# over TLS beside plain TCP (bench/tls.lua -> tls.md), then
# W6/W7, 100 to 10,000 coroutines in one luv process beside node-redlock and
# redis-semaphore (bench/stampede.lua -> stampede.md; bench/stampede.gp ->
# stampede.png, docs/stampede.png is a copy), then W10, the stampede guard
# in a lua-http service under wrk (bench/w10.lua -> w10.md; bench/w10.gp ->
# w10.png, docs/w10.png is a copy), then the modes: W8 semaphore
# beside redis-semaphore, W9 read-write, W2 fair (bench/modes.lua -> modes.md).
set -eu
cd "$(dirname "$0")/.."
export LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="./?.so;;"
out=${BENCH_OUT:-bench/out}
mkdir -p "$out"
lua5.4 bench/run.lua > "$out/table.md"
cat "$out/table.md"
gnuplot -e "dir='$out'" bench/plot.gp
echo "bench: plot in $out/handoff.png" >&2
echo "bench: W1/W3 by pool kind (one server, Cluster 3+3, Redlock over 3 and 5)" >&2
lua5.4 bench/poolkinds.lua > "$out/poolkinds.md"
echo
cat "$out/poolkinds.md"
echo "bench: 100 renewed locks: refresh requests/s and W1 beside them" >&2
lua5.4 bench/renew.lua > "$out/renew.md"
echo
cat "$out/renew.md"
echo "bench: on_lost under luv and cqueues: how soon after the loss is known" >&2
lua5.4 bench/lost.lua > "$out/lost.md"
echo
cat "$out/lost.md"
echo "bench: W1/W3 over TLS beside plain TCP" >&2
lua5.4 bench/tls.lua > "$out/tls.md"
echo
cat "$out/tls.md"
echo "bench: W6/W7: 100 to 10,000 coroutines under luv, beside node-redlock and redis-semaphore" >&2
sh bench/peers/install.sh || echo "bench: the node peers could not be installed: W6/W7 run fluxalock alone" >&2
# 0.1's core opens a connection per waiting coroutine: the fd limit (and the
# bench's redis-server's maxclients, set from it) must not be what is measured
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
lua5.4 bench/stampede.lua > "$out/stampede.md"
echo
cat "$out/stampede.md"
gnuplot -e "dir='$out'" bench/stampede.gp
echo "bench: plot in $out/stampede.png" >&2
echo "bench: W10: the stampede guard in a lua-http service (once, obtain, no lock) beside node http services" >&2
lua5.4 bench/w10.lua > "$out/w10.md"
echo
cat "$out/w10.md"
gnuplot -e "dir='$out'" bench/w10.gp
echo "bench: plot in $out/w10.png" >&2
echo "bench: W8/W9/W2 fair: the modes (semaphore beside redis-semaphore, read-write, fair)" >&2
lua5.4 bench/modes.lua > "$out/modes.md"
echo
cat "$out/modes.md"
