# W3 handoff latency, one curve per implementation: the share of handoffs
# (y) that took at most x milliseconds.  Data: bench/out/handoff-*.dat,
# written by bench/run.lua as "latency_ms cumulative_share" lines.
if (!exists("dir")) dir = "bench/out"
set terminal pngcairo size 900,600 font "DejaVu Sans,11"
set output dir."/handoff.png"
set title "W3 handoff: time from A's release call to B's obtain returning"
set xlabel "handoff latency (ms, log scale)"
set ylabel "share of handoffs at most this fast"
set logscale x
set xrange [0.02:200]
set yrange [0:1.02]
set format x "%g"
set grid xtics ytics mxtics
set key below horizontal height 1
set arrow from 0.5, graph 0 to 0.5, graph 1 nohead dt 2 lc rgb "#888888"
set label "target: median ≤ 0.5 ms," at 0.55, graph 0.12 tc rgb "#666666"
set label "p90 ≤ 1 ms" at 0.55, graph 0.06 tc rgb "#666666"
set arrow from 0.02, 0.9 to 1, 0.9 nohead dt 3 lc rgb "#888888"
set arrow from 1, 0 to 1, 0.9 nohead dt 3 lc rgb "#888888"
plot dir."/handoff-floor.dat" using 1:2 with steps lw 2 lc rgb "#444444" title "C floor (polls every 100 µs)", \
     dir."/handoff-fluxalock.dat" using 1:2 with steps lw 2 lc rgb "#1f77b4" title "fluxalock (woken by the release)", \
     dir."/handoff-redis-py.dat" using 1:2 with steps lw 2 lc rgb "#d62728" title "redis-py Lock (sleeps 0.1 s)"
