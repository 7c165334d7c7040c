#!/bin/sh
# make bench: run the workloads (bench/run.lua prints one markdown table,
# also kept in bench/out/table.md), then plot the W3 handoff latencies
# (bench/plot.gp -> bench/out/handoff.png; docs/handoff.png is a copy).
set -eu
cd "$(dirname "$0")/.."
export LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="./?.so;;"
mkdir -p bench/out
lua5.4 bench/run.lua | tee bench/out/table.md
gnuplot -e "dir='bench/out'" bench/plot.gp
echo "bench: plot in bench/out/handoff.png" >&2
