"""The redis-py driver of the benchmarks (see bench/run.lua).

    /usr/bin/python3 bench/rpy.py MODE PORT OUT START END KEY ROUNDS

The same modes and output as bench/floor.c (w1, w2, w3a, w3b), through
redis-py's Lock with its defaults (Debian's python3-redis 4.3.4:
SET NX PX to obtain, a Lua compare-and-delete to release, and a waiting
acquire that sleeps 0.1 s between tries).  START/END are CLOCK_MONOTONIC
seconds: time.monotonic() reads the same clock as the C floor and fluxalock.
"""
import sys
import time

import redis

mode, port, out, start, stop, key, rounds = sys.argv[1:8]
port, start, stop, rounds = int(port), float(start), float(stop), int(rounds)
now = time.monotonic

r = redis.Redis(host="127.0.0.1", port=port)
# commands on the side go through a client of their own (as in fl.lua)
side = redis.Redis(host="127.0.0.1", port=port)
samples, total, violations = [], 0, 0


def sleep_until(t):
    d = t - now()
    if d > 0:
        time.sleep(d)


def write(elapsed):
    with open(out, "w") as f:
        f.write("count=%d total=%d elapsed=%.6f violations=%d\n"
                % (len(samples), total, elapsed, violations))
        for s in samples:
            f.write("%.6f\n" % s)


if mode in ("w1", "w2"):
    w2 = mode == "w2"
    sleep_until(start)
    i = 0
    while True:
        t0 = now()
        if t0 >= stop:
            break
        i += 1
        name = key if w2 else "%s:%d" % (key, i)
        lock = r.lock(name, timeout=10, blocking_timeout=5 if w2 else None)
        if not lock.acquire(blocking=w2):
            raise SystemExit("%s: not obtained" % mode)
        if w2:
            t1 = now()
            if side.incr("bench:holders") != 1:
                violations += 1
            side.decr("bench:holders")
            lock.release()
        else:
            lock.release()
            t1 = now()
        total += 1
        if t1 < stop:
            samples.append((t1 - t0) * 1e6)
    write(stop - start)
elif mode in ("w3a", "w3b"):
    ready, go = key + ":ready", key + ":go"
    for i in range(rounds):
        if mode == "w3a":  # the holder
            side.blpop(ready, 10)
            lock = r.lock(key, timeout=10, blocking_timeout=1)
            if not lock.acquire():
                raise SystemExit("w3a: not obtained")
            side.rpush(go, 1)
            time.sleep((20 + (i * 7919) % 101) / 1000.0)  # 20..120 ms
            t = now()
            lock.release()
            samples.append(t)
        else:  # the waiter
            side.rpush(ready, 1)
            side.blpop(go, 10)
            lock = r.lock(key, timeout=10, blocking_timeout=5)
            if not lock.acquire():
                raise SystemExit("w3b: not obtained")
            samples.append(now())
            lock.release()
        total += 1
    write(0)
else:
    raise SystemExit("unknown mode " + mode)
