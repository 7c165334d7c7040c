# W10: p99 latency (y, ms) of each implementation of the stampede-guarded
# service under wrk (bars), with p50 beside it.  Data: bench/out/w10.dat,
# written by bench/w10.lua as 'index "implementation" p99_ms p50_ms' lines.
if (!exists("dir")) dir = "bench/out"
set terminal pngcairo size 900,520 font "DejaVu Sans,11"
set output dir."/w10.png"
set title "W10: two services, 20 keys, wrk 400 connections for 5 s, backend 20 ms, cache fresh 0.5 s"
set ylabel "latency, ms (log scale)"
set logscale y
set yrange [1:*]
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set xtics rotate by -20
set key top left
plot dir."/w10.dat" using 3:xtic(2) title "p99" lc rgb "#d62728", \
     "" using 4 title "p50" lc rgb "#1f77b4"
