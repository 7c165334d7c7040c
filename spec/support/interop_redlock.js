// A node-redlock 5 lock (on ioredis) beside fluxalock (spec/interop_spec.lua).
// hold PORT KEY: take the lock, wait until a client is blocked in BLPOP (a
//   fluxalock waiter), then check the value, extend and release it.
// try PORT KEY: one acquire without retries; release it if it was obtained.
// Prints one line per step; an exception prints ERROR and its name.
"use strict";
const Redis = require("ioredis");
const Redlock = require("redlock").default;

const [mode, port, key] = process.argv.slice(2);
const redis = new Redis({ host: "127.0.0.1", port: Number(port), lazyConnect: false });
const redlock = new Redlock([redis], { retryCount: 0, automaticExtensionThreshold: 0 });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waiterBlocked() {
  const list = await redis.client("LIST");
  return list.split("\n").some((l) => / flags=[a-zA-Z]*b/.test(l) && / cmd=blpop/.test(l));
}

async function hold() {
  let lock = await redlock.acquire([key], 5000);
  console.log("HELD true");
  const deadline = Date.now() + 10000;
  while (!(await waiterBlocked())) {
    if (Date.now() > deadline) { console.log("NO WAITER"); return; }
    await sleep(5);
  }
  console.log("WAITER");
  console.log("VALUE", (await redis.get(key)) === lock.value ? "same" : "changed");
  lock = await lock.extend(7000);
  console.log("EXTEND true");
  console.log("PTTL", await redis.pttl(key));
  await lock.release();
  console.log("RELEASED");
}

async function attempt() {
  let lock;
  try {
    lock = await redlock.acquire([key], 5000);
  } catch (e) {
    console.log("ACQUIRED false");
    return;
  }
  console.log("ACQUIRED true");
  await lock.release();
  console.log("RELEASED");
}

(mode === "hold" ? hold() : attempt())
  .catch((e) => console.log("ERROR", e && e.name))
  .finally(() => redis.disconnect());
