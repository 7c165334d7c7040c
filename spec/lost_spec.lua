-- Lost leases, told (API.md): obtain's opts.on_lost, fluxalock.lost_fd()
-- and fluxalock.dispatch(), in a plain script and under the luv and
-- cqueues hosts (whose adapters watch the descriptor themselves); and a
-- renewed obtain's wait, which may exceed its ttl.  A lock is lost for
-- real: another client overwrites its key in a real redis-server, and the
-- renewal thread's next refresh finds another value there.
local R = require "support.redis"
local H = require "support.hosts"
local socket = require "socket"

local fluxalock = require "fluxalock"

-- is fd readable within 'secs'?  (luasocket's select polls any object
-- with a getfd method)
local function readable(fd, secs)
  local ready = socket.select({ { getfd = function() return fd end, dirty = function() return false end } },
    nil, secs)
  return #ready > 0
end

local function raised(f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(err):gsub("^[^:]+:%d+: ", "")
end

describe("lost leases, told", function()
  local server, locker
  R.setup({ teardown = function() fluxalock.configure { host = false } end },
    function(e) server, locker = e.server, e.locker end)

  describe("misuse", function()
    it("on_lost without renew raises, naming argument #4 and the option", function()
      assert.equal("bad argument #4 to 'obtain' (option 'on_lost' needs option 'renew')",
        raised(function() locker:obtain("k", 5, 0, { on_lost = print }) end))
      assert.equal("bad argument #4 to 'obtain' (option 'on_lost' needs option 'renew')",
        raised(function() locker:obtain("k", 5, 0, { renew = false, on_lost = print }) end))
    end)

    it("on_lost must be a function", function()
      assert.equal("bad argument #4 to 'obtain' (option 'on_lost' must be a function, got string)",
        raised(function() locker:obtain("k", 5, 0, { renew = true, on_lost = "x" }) end))
    end)

    it("wait above ttl still raises without renew", function()
      assert.equal("bad argument #3 to 'obtain' (wait timeout must not exceed ttl)",
        raised(function() locker:obtain("k", 1, 2) end))
      assert.equal("bad argument #3 to 'obtain' (wait timeout must not exceed ttl)",
        raised(function() locker:obtain("k", 1, 2, { renew = false }) end))
      assert.equal("bad argument #3 to 'obtain' (wait timeout must not exceed 1e9 seconds)",
        raised(function() locker:obtain("k", 1, 2e9, { renew = true }) end))
    end)
  end)

  describe("in a plain script", function()
    it("lost_fd() becomes readable; dispatch() runs on_lost once, with the lock, and drains it", function()
      local calls = {}
      local lock = assert(locker:obtain("plain", 0.3, 0, { renew = 0.05, on_lost = function(l)
        calls[#calls + 1] = l
      end }))
      local fd = fluxalock.lost_fd()
      assert.is_true(math.type(fd) == "integer" and fd >= 0)
      fluxalock.dispatch() -- nothing lost yet (an earlier spec's losses are drained)
      assert.is_false(readable(fd, 0))
      server:cli("SET", "plain", "someone-else")
      assert.is_true(readable(fd, 5), "the descriptor never became readable")
      assert.equal(0, #calls) -- not from the renewal thread, not by itself
      assert.equal(1, fluxalock.dispatch())
      assert.equal(1, #calls)
      assert.equal(lock, calls[1])
      assert.is_false(lock:held())
      assert.is_false(readable(fd, 0))
      assert.equal(0, fluxalock.dispatch())
      assert.equal(1, #calls)
      assert.is_false(lock:release()) -- it was lost: nothing of ours to delete
      assert.equal("someone-else", server:cli("GET", "plain"))
    end)

    it("runs at the next call of a lock's method, or of a locker's", function()
      local calls = 0
      local function counted(key)
        return assert(locker:obtain(key, 0.3, 0, { renew = 0.05, on_lost = function() calls = calls + 1 end }))
      end
      local lock = counted("by-method")
      local fd = fluxalock.lost_fd()
      server:cli("SET", "by-method", "x")
      assert.is_true(readable(fd, 5))
      assert.equal(0, calls)
      assert.is_string(lock:key()) -- any method: the function runs first
      assert.equal(1, calls)
      lock:release()
      -- a locker's method too
      local other = counted("by-locker")
      server:cli("SET", "by-locker", "x")
      assert.is_true(readable(fd, 5))
      assert.equal(1, calls)
      locker:stats()
      assert.equal(2, calls)
      assert.is_false(other:held())
    end)

    it("is not called for a lock released in time, and an error in it is reported, not raised", function()
      local calls = 0
      local lock = assert(locker:obtain("released", 0.3, 0, { renew = 0.05, on_lost = function()
        calls = calls + 1
      end }))
      assert.is_true(lock:release())
      server:cli("SET", "released", "x") -- too late to matter: no renewal runs
      local child = R.child([[
        local lock = assert(locker:obtain("raising", 0.3, 0, { renew = 0.05,
          on_lost = function() error("boom") end }))
        witness:call { "SET", "raising", "x" }
        local fd = { getfd = function() return fluxalock.lost_fd() end, dirty = function() return false end }
        assert(#require("socket").select({ fd }, nil, 10) == 1)
        print("dispatched", fluxalock.dispatch())
        print("held", lock:held())
      ]], { URL = server.url, WITNESS = server.port })
      local out = child:wait(30)
      assert.matches("fluxalock: an on_lost function raised an error: [^\n]*boom", out)
      assert.matches("dispatched\t1\nheld\tfalse\n", out)
      assert.equal(0, fluxalock.dispatch())
      assert.equal(0, calls)
    end)

    it("a renewed obtain waits past its ttl, and gets a lock that is renewed", function()
      local holder = R.child([[
        local lock = assert(locker:obtain("long-wait", 5))
        witness:call { "SET", "long-wait:ready", "1" }
        core.sleep(0.8) -- holds it longer than the waiter's ttl
        print("released", lock:release())
      ]], { URL = server.url, WITNESS = server.port })
      R.until_true(function() return server:cli("EXISTS", "long-wait:ready") == "1" end, 10, "holder")
      local t0 = R.now()
      local lock, err = locker:obtain("long-wait", 0.3, 5, { renew = true })
      assert.truthy(lock, err)
      assert.is_true(R.now() - t0 > 0.3, "it waited past its ttl")
      assert.matches("released\ttrue", holder:wait(10))
      R.sleep(0.5) -- longer than its ttl: only the renewal keeps it
      assert.is_true(lock:held())
      assert.equal(lock:token(), server:cli("GET", "long-wait"))
      assert.is_true(lock:release())
    end)
  end)

  describe("under a custom host", function()
    it("nothing runs behind the program's back: its poll loop sees lost_fd and calls dispatch()", function()
      -- a host whose wait is a plain select on the descriptor (no loop of its own)
      fluxalock.configure { host = { wait = function(fd, _, secs) readable(fd, secs) end } }
      finally(function() fluxalock.configure { host = false } end)
      local calls = 0
      local l = fluxalock.locker(server.url)
      local lock = assert(l:obtain("custom", 0.3, 0, { renew = 0.05, on_lost = function() calls = calls + 1 end }))
      server:cli("SET", "custom", "x")
      assert.is_true(readable(fluxalock.lost_fd(), 5))
      lock:key()
      l:stats()
      assert.equal(0, calls) -- the methods leave it to the program
      assert.equal(1, fluxalock.dispatch())
      assert.equal(1, calls)
      assert.is_false(lock:release())
    end)
  end)

  for _, host in ipairs { "luv", "cqueues" } do
    describe("under host '" .. host .. "'", function()
      it("the adapter watches lost_fd: on_lost runs in a coroutine of its own, soon", function()
        fluxalock.configure { host = host }
        finally(function() fluxalock.configure { host = false } end)
        local d = H[host]()
        local got, holder_co, stolen
        d.spawn(function()
          holder_co = coroutine.running()
          local l = fluxalock.locker(server.url)
          local lock = assert(l:obtain("hosted:" .. host, 0.3, 0, { renew = 0.05, on_lost = function(lk)
            got = { lock = lk, co = coroutine.running(), at = R.now(), yieldable = coroutine.isyieldable() }
          end }))
          server:cli("SET", "hosted:" .. host, "other")
          stolen = R.now()
          local deadline = R.now() + 5
          while not got and R.now() < deadline do d.sleep(0.01) end
          assert(got, "on_lost never ran")
          assert(got.lock == lock)
          assert(not lock:held())
          lock:release()
        end)
        local t0 = R.now()
        d.run() -- returns: the watch does not keep the loop running once nothing is watched
        assert.same({}, d.errors)
        assert.is_true(R.now() - t0 < 4, "the loop ran on for " .. (R.now() - t0) .. " s")
        assert.truthy(got)
        assert.are_not.equal(holder_co, got.co)
        assert.is_true(got.yieldable) -- it may call the lock's methods through the host
        -- the loss is known at the next renewal (every 0.05 s); told soon after
        assert.is_true(got.at - stolen < 1, ("told %.3f s after the key was taken"):format(got.at - stolen))
        assert.equal(0, fluxalock.dispatch()) -- told once
        if host == "luv" then
          -- nothing of the watch stays in the loop: the specs that run
          -- after this one in the same process count the loop's polls
          local polls = 0
          require("luv").walk(function(h)
            if h:get_type() == "poll" and not h:is_closing() then polls = polls + 1 end
          end)
          assert.equal(0, polls)
        end
      end)

      it("a renewed obtain waits past its ttl while a coroutine holds the key", function()
        fluxalock.configure { host = host }
        finally(function() fluxalock.configure { host = false } end)
        local d = H[host]()
        local res = {}
        local l = fluxalock.locker(server.url)
        d.spawn(function()
          local lock = assert(l:obtain("hosted-wait:" .. host, 5))
          res.held = true
          d.sleep(0.8) -- held longer than the waiter's ttl
          res.released = lock:release()
        end)
        d.spawn(function()
          while not res.held do d.sleep(0.01) end
          local t0 = R.now()
          local lock, err = l:obtain("hosted-wait:" .. host, 0.3, 5, { renew = true })
          res.waited = R.now() - t0
          res.err = err
          if lock then
            d.sleep(0.4) -- longer than its ttl: only the renewal keeps it
            res.held_after = lock:held()
            res.value = server:cli("GET", "hosted-wait:" .. host) == lock:token()
            res.release = lock:release()
          end
        end)
        d.run()
        assert.same({}, d.errors)
        assert.is_nil(res.err)
        assert.is_true(res.released)
        assert.is_true(res.waited > 0.3, tostring(res.waited))
        assert.is_true(res.held_after)
        assert.is_true(res.value)
        assert.is_true(res.release)
      end)
    end)
  end

  -- A program that loads fluxalock once more (a reload: package.loaded
  -- cleared) while the first copy still watches a renewed lock: libuv
  -- takes one poll handle per descriptor, and the first copy's is on
  -- lost_fd.  The second copy's watcher asked for another one there: luv
  -- 1.44's uv.new_poll failed with EEXIST and lost the memory it had
  -- allocated (160 bytes, an ASan leak report at the end of a busted
  -- process that ran two such spec files), and the second copy's losses
  -- were never told.
  it("under host 'luv', a fluxalock loaded again tells its own losses, and no uv.new_poll fails", function()
    local proc = R.spawn([[
local uv = require "luv"
local new_poll, failed = uv.new_poll, 0
uv.new_poll = function(fd)
  local p, e = new_poll(fd)
  if not p then failed = failed + 1 end
  return p, e
end
local url, told, held = os.getenv("URL"), {}, {}
-- run the loop until fn() is true, 3 s at most
local function run_until(fn)
  local t = uv.new_timer()
  t:start(3000, 0, function() t:close() uv.stop() end)
  local step = uv.new_timer()
  step:start(5, 5, function() if fn() then step:close() if not t:is_closing() then t:close() end uv.stop() end end)
  uv.run()
  if not step:is_closing() then step:close() end
end
for i = 1, 2 do
  for k in pairs(package.loaded) do
    if k == "fluxalock" or k:match("^fluxalock%.") then package.loaded[k] = nil end
  end
  local fl = require "fluxalock"
  fl.configure { pools = { default = { url = url } }, host = "luv" }
  local l = fl.locker()
  coroutine.wrap(function()
    held[i] = assert(l:obtain("reload:" .. i, 0.3, 0, { renew = 0.05, on_lost = function() told[i] = true end }))
  end)()
  run_until(function() return held[i] ~= nil end)
end
local raw = require("fluxalock.core").pool { path = os.getenv("SOCK") }
assert(raw:call { "SET", "reload:2", "other" })
run_until(function() return told[2] end)
print(("failed=%d told=%s"):format(failed, tostring(told[2])))
os.exit(0, true)
]], { URL = server.url, SOCK = server.socket })
    assert.equal("failed=0 told=true\n", proc:wait(20))
  end)
end)
