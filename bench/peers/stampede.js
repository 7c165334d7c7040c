// One W6/W7 run of a node peer (started by bench/stampede.lua), the same
// workloads as bench/stampede_fl.lua on one ioredis connection:
//
//   node --expose-gc stampede.js IMPL MODE N PORT OUT WAIT HOLD
//
// IMPL redlock (node-redlock 5) or semaphore (redis-semaphore's Mutex);
// MODE w6: N async functions obtain one key (wait WAIT s), hold it HOLD s
// (setTimeout), release; w7: N keys, obtain + release; bare: N async
// functions that only await (the memory baseline).  The libraries' defaults
// are kept except how long an acquire may wait: node-redlock retries
// every 200 ms +- 100 ms, so WAIT / 200 ms retries; redis-semaphore gets
// acquireTimeout = WAIT (it retries every 10 ms).  Output as stampede_fl.lua.
"use strict";
const fs = require("fs");

const [impl, mode, nArg, portArg, out, waitArg, holdArg] = process.argv.slice(2);
const N = Number(nArg), WAIT = Number(waitArg || 30), HOLD = Number(holdArg || 0.001);
const TTL = WAIT + 10;
const now = () => Number(process.hrtime.bigint()) / 1e9;

// the V8 heap in use, the resident set, and what is live: the V8 heap and
// the memory outside it that V8 objects hold (buffers)
function heap() {
  global.gc();
  const m = process.memoryUsage();
  return [m.heapUsed, m.rss, m.heapUsed + m.external];
}

function write(res, failures) {
  const line = Object.keys(res).sort().map((k) => `${k}=${Number(res[k]).toFixed(6)}`).join(" ");
  const rest = Object.entries(failures || {}).map(([m, n]) => `${n} ${m}\n`).join("");
  fs.writeFileSync(out + ".tmp", line + "\n" + rest);
  fs.renameSync(out + ".tmp", out);
}

let [js0, rss0, live0] = heap();

if (mode === "bare") {
  let release;
  const gate = new Promise((r) => { release = r; });
  const all = [];
  for (let i = 0; i < N; i++) all.push((async () => { await gate; })());
  const [js1, rss1, live1] = heap();
  release();
  Promise.all(all).then(() => {
    write({ lua_per: (js1 - js0) / N, rss_per: (rss1 - rss0) / N, live_per: (live1 - live0) / N });
    process.exit(0);
  });
} else {
  const Redis = require("ioredis");
  const redis = new Redis({ host: "127.0.0.1", port: Number(portArg) });
  let obtain;
  if (impl === "redlock") {
    const Redlock = require("redlock").default;
    const redlock = new Redlock([redis], { retryCount: Math.ceil((WAIT * 1000) / 200) });
    obtain = async (key) => {
      const lock = await redlock.acquire([key], TTL * 1000);
      return () => lock.release();
    };
  } else {
    const { Mutex } = require("redis-semaphore");
    obtain = async (key) => {
      const m = new Mutex(redis, key, { acquireTimeout: WAIT * 1000, lockTimeout: TTL * 1000 });
      await m.acquire();
      return () => m.release();
    };
  }

  const st = { obtained: 0, failed: 0, returned: 0, held: 0, mem_lua: 0, mem_rss: 0, mem_live: 0, mem_waiting: 0,
    release_max: 0 };
  const failures = {}, acquire = [];
  let t0 = 0, lastRelease = 0;
  const sleep = (s) => new Promise((r) => setTimeout(r, Math.max(1, Math.round(s * 1000))));

  const sampleHeap = () => {
    const waiting = N - st.returned;
    if (waiting <= 0 || waiting < N / 2) return; // as stampede_fl.lua: half of them waiting at least
    const [js1, rss1, live1] = heap();
    if (st.mem_waiting === 0 || (live1 - live0) / waiting > st.mem_live / st.mem_waiting) {
      st.mem_lua = js1 - js0; st.mem_rss = rss1 - rss0; st.mem_live = live1 - live0; st.mem_waiting = waiting;
    }
  };
  const fail = (err) => {
    const msg = String(err && err.message || err).replace(/\d+/g, "N").slice(0, 120);
    failures[msg] = (failures[msg] || 0) + 1;
    st.failed++;
  };
  const finish = () => {
    const times = acquire.slice().sort((a, b) => a - b);
    const p99 = times.length ? times[Math.max(0, Math.ceil(0.99 * times.length) - 1)] : NaN;
    const t = now();
    write({
      n: N, obtained: st.obtained, failed: st.failed, unfinished: N - st.returned,
      elapsed: t - t0, span: (mode === "w6" && lastRelease > 0 ? lastRelease : t) - t0,
      held: st.held, p99_ms: p99 * 1000, release_max_ms: st.release_max * 1000,
      mem_lua: st.mem_lua, mem_rss: st.mem_rss, mem_live: st.mem_live, mem_waiting: st.mem_waiting,
    }, failures);
  };
  process.on("SIGTERM", () => { finish(); process.exit(0); });

  const tenth = Math.max(1, Math.floor(N / 10));
  const body = async (i) => {
    const key = mode === "w6" ? "w6:stampede" : `w7:${i}`;
    const ta = now();
    let release;
    try {
      release = await obtain(key);
    } catch (e) {
      fail(e);
      return;
    }
    const tb = now();
    st.obtained++;
    acquire.push(tb - ta);
    if (mode === "w6") {
      if (st.obtained === tenth) sampleHeap();
      await sleep(HOLD);
    }
    const tr = now();
    st.held += tr - tb;
    if (mode === "w6") lastRelease = Math.max(lastRelease, tr);
    try { await release(); } catch (e) { fail("release: " + (e && e.message)); }
    st.release_max = Math.max(st.release_max, now() - tr);
  };

  redis.once("ready", () => {
    // the connection is open first: fluxalock's runs include their connects,
    // ioredis would otherwise queue everything behind its own
    [js0, rss0, live0] = heap(); // the libraries loaded, the connection open
    t0 = now();
    const all = [];
    for (let i = 1; i <= N; i++) all.push(body(i).finally(() => { st.returned++; }));
    sampleHeap();
    Promise.all(all).then(() => { finish(); process.exit(0); });
  });
}
