// W8 of bench/modes.lua for redis-semaphore's Semaphore on one ioredis
// connection, the same workload as bench/modes_fl.lua's w8:
//
//   node semaphore.js N LIMIT HOLD PORT OUT
//
// N async functions each take one of LIMIT permits of one key once, count
// themselves in Redis (INCR/DECR), hold the permit HOLD s (setTimeout),
// release.  The library's defaults are kept except how long an acquire may
// wait (acquireTimeout 60 s; it retries every 10 ms).  Writes one line of
// name=value figures to OUT.
"use strict";
const fs = require("fs");
const Redis = require("ioredis");
const { Semaphore } = require("redis-semaphore");

const [nArg, limitArg, holdArg, portArg, out] = process.argv.slice(2);
const N = Number(nArg), LIMIT = Number(limitArg), HOLD = Number(holdArg);
const now = () => Number(process.hrtime.bigint()) / 1e9;
const sleep = (s) => new Promise((r) => setTimeout(r, Math.max(1, Math.round(s * 1000))));
const redis = new Redis({ host: "127.0.0.1", port: Number(portArg) });
const st = { n: N, obtained: 0, failed: 0, most: 0, over: 0, elapsed: 0 };

async function one() {
  const s = new Semaphore(redis, "w8peer", LIMIT, { acquireTimeout: 60000, lockTimeout: 60000 });
  try {
    await s.acquire();
  } catch (e) {
    st.failed++;
    return;
  }
  st.obtained++;
  const c = await redis.incr("w8peer:inside");
  if (c > st.most) st.most = c;
  if (c > LIMIT) st.over++;
  await sleep(HOLD);
  await redis.decr("w8peer:inside");
  await s.release();
}

redis.once("ready", () => {
  const t0 = now();
  const all = [];
  for (let i = 0; i < N; i++) all.push(one());
  Promise.all(all).then(() => {
    st.elapsed = now() - t0;
    const line = Object.keys(st).sort().map((k) => `${k}=${Number(st[k]).toFixed(6)}`).join(" ");
    fs.writeFileSync(out, line + "\n");
    process.exit(0);
  });
});
