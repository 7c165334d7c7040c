"""A redis-py Lock beside fluxalock (spec/interop_spec.lua).

hold PORT KEY: take the lock, wait until a client is blocked in BLPOP (a
    fluxalock waiter), then check the value, extend and release it.
try PORT KEY: one non-blocking acquire; release it if it was obtained.
Prints one line per step; an exception prints ERROR and its class.
"""
import sys
import time

import redis
from redis.lock import Lock


def waiter_blocked(r):
    return any("b" in c.get("flags", "") and c.get("cmd") == "blpop"
               for c in r.client_list())


def hold(r, key):
    lock = Lock(r, key, timeout=5)
    print("HELD", lock.acquire(blocking=False), flush=True)
    token = lock.local.token
    deadline = time.monotonic() + 10
    while not waiter_blocked(r):
        if time.monotonic() > deadline:
            print("NO WAITER", flush=True)
            return
        time.sleep(0.005)
    print("WAITER", flush=True)
    print("VALUE", "same" if r.get(key) == token else "changed", flush=True)
    print("EXTEND", lock.extend(2), flush=True)
    print("OWNED", lock.owned(), flush=True)
    print("PTTL", r.pttl(key), flush=True)
    lock.release()
    print("RELEASED", flush=True)


def attempt(r, key):
    lock = Lock(r, key, timeout=5)
    got = lock.acquire(blocking=False)
    print("ACQUIRED", got, flush=True)
    if got:
        lock.release()
        print("RELEASED", flush=True)


def main():
    mode, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        (hold if mode == "hold" else attempt)(r, key)
    except Exception as e:  # reported to the spec, which fails on it
        print("ERROR", type(e).__name__, flush=True)


main()
