// W10's node peer (bench/w10.lua): examples/http_service.lua written for node
// http, with a lock of node-redlock 5 or redis-semaphore 5 (Mutex) on one
// ioredis connection:
//
//   node http_service.js IMPL PORT BACKEND REDIS_PORT [NAME]
//
// GET /item/<key> answers from a per-process cache fresh for 0.5 s; on a
// miss it takes the lock "regen:<key>" (ttl 5 s, waiting up to 3 s), looks
// at the cache again, calls BACKEND/<key> if it is still stale, and
// releases.  The libraries' defaults are kept except how long an acquire
// may wait (as bench/peers/stampede.js): node-redlock retries every
// 200 ms +- 100 ms, so 15 retries; redis-semaphore gets acquireTimeout 3 s.
// Prints "listening on http://127.0.0.1:<port>" once it accepts.
"use strict";
const http = require("http");
const Redis = require("ioredis");

const [impl, portArg, backend, redisPort, name] = process.argv.slice(2);
const FRESH = 0.5, TTL = 5, WAIT = 3;
const redis = new Redis({ host: "127.0.0.1", port: Number(redisPort) });
const now = () => Number(process.hrtime.bigint()) / 1e9;
const agent = new http.Agent({ keepAlive: false });

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

const cache = new Map(); // key -> [value, when]
const fresh = (key) => {
  const e = cache.get(key);
  return e && now() - e[1] < FRESH ? e[0] : undefined;
};

// one call of the backend, a fresh connection each (as the lua-http service)
const fetch = (key) => new Promise((resolve, reject) => {
  const req = http.get(`${backend}/${key}`, { agent, headers: { "x-service": name || "node" } }, (res) => {
    let body = "";
    res.setEncoding("utf8");
    res.on("data", (c) => { body += c; });
    res.on("end", () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`backend: status ${res.statusCode}`))));
  });
  req.setTimeout(5000, () => req.destroy(new Error("backend: timeout")));
  req.on("error", reject);
});

async function value(key) {
  let v = fresh(key);
  if (v !== undefined) return v;
  const release = await obtain("regen:" + key);
  try {
    v = fresh(key);
    if (v !== undefined) return v;
    v = await fetch(key);
    cache.set(key, [v, now()]);
    return v;
  } finally {
    await release().catch(() => {});
  }
}

const server = http.createServer((req, res) => {
  const m = /^\/item\/([\w.-]+)$/.exec(req.url);
  if (!m) {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("GET /item/<key>\n");
    return;
  }
  value(m[1]).then((v) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(v);
  }, (err) => {
    res.writeHead(503, { "content-type": "text/plain" });
    res.end(String(err && err.message) + "\n");
  });
});
server.listen(Number(portArg), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
