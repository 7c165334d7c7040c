#!/bin/sh
# make bench: run the workloads (bench/run.lua prints one markdown table,
# also kept in $BENCH_OUT/table.md), then plot the W3 handoff latencies
# (bench/plot.gp -> $BENCH_OUT/handoff.png; docs/handoff.png is a copy).
set -eu
cd "$(dirname "$0")/.."
export LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="./?.so;;"
out=${BENCH_OUT:-bench/out}
mkdir -p "$out"
lua5.4 bench/run.lua > "$out/table.md"
cat "$out/table.md"
gnuplot -e "dir='$out'" bench/plot.gp
echo "bench: plot in $out/handoff.png" >&2
