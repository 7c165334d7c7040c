# W6 stampede: milliseconds per handoff beyond the 1 ms hold (y) against the
# number of coroutines on one key (x), one curve per implementation.  Data:
# bench/out/stampede-*.dat, written by bench/stampede.lua as
# "N ms_per_handoff all_obtained" lines.
if (!exists("dir")) dir = "bench/out"
set terminal pngcairo size 900,600 font "DejaVu Sans,11"
set output dir."/stampede.png"
# stampede.lua names the fluxalock tree it ran in stampede-core.txt
core = system("cat '".dir."/stampede-core.txt' 2>/dev/null")
set title "W6 stampede: N coroutines on one key, each holds it 1 ms\nfluxalock core: ".core
set xlabel "coroutines (N, log scale)"
set ylabel "ms per handoff beyond the hold (log scale)"
set logscale xy
set xrange [70:14000]
set yrange [0.1:10000]
set format x "%g"
set format y "%g"
set grid xtics ytics mxtics mytics
set key below horizontal height 1
set arrow from 70, 1.5 to 14000, 1.5 nohead dt 2 lc rgb "#888888"
set label "target at N = 10000: ≤ 1.5 ms" at 80, 2.1 tc rgb "#666666"
set label "circled: not every coroutine obtained within its 30 s wait" at graph 0.02, graph 0.95 tc rgb "#666666"
missed(all, y) = all == 0 ? y : 1/0
plot dir."/stampede-fluxalock.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "fluxalock (luv host)", \
     dir."/stampede-node-redlock.dat" using 1:2 with linespoints lw 2 pt 5 lc rgb "#2ca02c" title "node-redlock 5 (ioredis)", \
     dir."/stampede-redis-semaphore.dat" using 1:2 with linespoints lw 2 pt 9 lc rgb "#d62728" title "redis-semaphore 5 (ioredis)", \
     for [f in "fluxalock node-redlock redis-semaphore"] dir."/stampede-".f.".dat" using 1:(missed($3, $2)) \
       with points pt 6 ps 3 lc rgb "#000000" notitle
