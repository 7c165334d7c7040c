-- Edges a review of the core found (issue 17's items 3, 9, 10 and 12; 2 and
-- 5 are in threads_spec, 4 in renew_spec): each case failed before its fix.
-- docs/reliability.md lists them with their fixes.
local R = require "support.redis"
local core = require "fluxalock.core"

local ROOT = R.sh("pwd"):gsub("%s+$", "")
local q = R.quote

describe("the core's edges", function()
  local server

  R.setup({ module = false }, function(e) server = e.server end)

  -- item 3: a suspend must count, as it does for the keys' expiry in Redis
  it("keeps its deadlines on a clock that counts a suspend (CLOCK_BOOTTIME)", function()
    assert.equal("boottime", core.clock)
    -- /proc/uptime is that clock: the core's time agrees with it
    local f = assert(io.open("/proc/uptime"))
    local up = tonumber(f:read("l"):match("^[%d.]+"))
    f:close()
    local now = core.now()
    assert.is_true(math.abs(now - up) < 1.5, ("core %.2f, uptime %.2f"):format(now, up))
  end)

  -- item 9: seconds -> poll(2)'s int milliseconds, for every wait the core
  -- makes; a unit test of the conversion (24.8 days cannot be waited out)
  it("turns any deadline into a poll timeout from 0 to an hour (no int overflow past 24.8 days)", function()
    local dir = R.tmpdir("clock")
    finally(function() R.sh("rm -rf " .. q(dir)) end)
    local f = assert(io.open(dir .. "/t.c", "w"))
    f:write [[
      #include <math.h>
      #include <stdio.h>
      #include "fluxalock.h"
      int main(void) {
        double v[] = {-1, 0, 0.0004, 0.5, 3599.5, 3600, 2147483.648, 3e6, 1e9, NAN};
        unsigned i;
        for (i = 0; i < sizeof v / sizeof v[0]; i++) printf("%d\n", fl_poll_ms(v[i]));
        return 0;
      }
    ]]
    f:close()
    local flags = R.sh("pkg-config --cflags lua5.4 hiredis 2>/dev/null"):gsub("%s+$", "")
    local out, ok = R.sh(("cc -std=c99 %s -I%s -o %s %s %s 2>&1 && %s"):format(flags, q(ROOT .. "/csrc"),
      q(dir .. "/t"), q(dir .. "/t.c"), q(ROOT .. "/csrc/clock.c"), q(dir .. "/t")))
    assert(ok, out)
    local ms = {}
    for n in out:gmatch("%-?%d+") do ms[#ms + 1] = tonumber(n) end
    assert.same({ 0, 0, 1, 501, 3599501, 3600000, 3600000, 3600000, 3600000, 0 }, ms)
  end)

  -- item 10: a prefix is bytes, NUL included (docs/api.md: "free of NUL bytes
  -- (except prefix)")
  it("uses a prefix with a NUL byte whole: the key in Redis is prefix..key, byte for byte", function()
    local fl = R.fluxalock(server, { prefix = "jobs\0x:" })
    local locker = fl.locker()
    local lock = assert(locker:obtain("nul", 5))
    -- the keys under "jobs", sorted (NUL shown as \0 in a failure's message)
    local function keys()
      local t = {}
      for k in server:cli("KEYS", "jobs*"):gsub("%z", "\\0"):gmatch("[^\n]+") do t[#t + 1] = k end
      table.sort(t)
      return table.concat(t, " ")
    end
    -- the lock and its fence counter, both under the whole prefix
    assert.equal("jobs\\0x:fluxalock:fence jobs\\0x:nul", keys())
    assert.is_true(lock:held())
    -- another caller finds it held, on the same key
    local lock2, err = locker:obtain("nul", 5)
    assert.is_nil(lock2)
    assert.equal("not obtained", err)
    assert.is_true(lock:release())
    -- gone; what is left (the fence, a wake-up list) has the whole prefix
    local left = keys()
    assert.is_nil(left:find("jobs\\0x:nul", 1, true), left)
    for k in left:gmatch("%S+") do assert.matches("^jobs\\0x:fluxalock:", k) end
    -- a pool whose prefix stops at the NUL is another namespace
    local other = R.fluxalock(server, { prefix = "jobs" }).locker()
    local l3 = assert(other:obtain("nul", 5))
    assert.matches("%f[%S]jobsnul%f[%s%z]", keys())
    l3:release()
  end)

  -- item 12: the idle pipe a wait-only host sleeps on
  it("keeps its idle pipe out of the program's children (close-on-exec)", function()
    local fd = core.idlefd()
    local pipe = R.sh("readlink /proc/" .. R.sh("echo $PPID"):gsub("%s+$", "") .. "/fd/" .. fd):gsub("%s+$", "")
    assert.matches("^pipe:%[%d+%]$", pipe)
    -- a child of this process lists what it inherited
    local listing = R.sh("ls -l /proc/self/fd/ 2>&1")
    assert.matches("%->", listing) -- it did list its descriptors
    assert.is_nil(listing:find(pipe, 1, true), listing)
  end)

  -- item 12: a link counts its queued requests per key bucket (conn_io.c);
  -- one key's requests share a link, so they reach Redis in order
  it("keeps 65537 coroutines' queued tries of one key on one connection", function()
    local fl = R.fluxalock(server, { max_connections = 2, timeout = 60 })
    fl.configure { host = { wait = function() coroutine.yield() end } }
    finally(function() fl.configure { host = false } end)
    local locker = fl.locker()
    local n, cos, got = 65537, {}, 0
    server:pause() -- no reply comes: every try stays queued
    local paused = true
    finally(function() if paused then server:resume() end end)
    for i = 1, n do
      cos[i] = coroutine.create(function()
        local lock = locker:obtain("buckets", 30)
        if lock then got = got + 1 assert(lock:release()) end
      end)
      assert(coroutine.resume(cos[i]))
    end
    assert.equal(1, (locker._pool:connections()))
    server:resume()
    paused = false
    local live
    repeat
      live = 0
      for i = 1, n do
        if coroutine.status(cos[i]) == "suspended" then
          assert(coroutine.resume(cos[i]))
          if coroutine.status(cos[i]) == "suspended" then live = live + 1 end
        end
      end
    until live == 0
    assert.is_true(got >= 1)
    assert.equal("0", server:cli("EXISTS", "buckets"))
  end)
end)
