-- fluxalock inside a luv (libuv) event loop: 50 coroutines share 5 jobs;
-- each waits for its job's lock without blocking the loop, and a repeating
-- timer keeps firing the whole time.
--
--   FLUXALOCK_URL=redis://127.0.0.1:6379/0 lua5.4 examples/luv_host.lua
local uv = require "luv"
local fluxalock = require "fluxalock"

fluxalock.configure { host = "luv" } -- every wait yields to the uv loop
local locker = fluxalock.locker()

-- a coroutine-friendly sleep on a uv timer
local function sleep(seconds)
  local co = coroutine.running()
  local timer = uv.new_timer()
  timer:start(math.floor(seconds * 1000), 0, function()
    timer:close()
    assert(coroutine.resume(co))
  end)
  coroutine.yield()
end

local done, finished, ticks = 0, 0, 0
local ticker = uv.new_timer()
ticker:start(5, 5, function() ticks = ticks + 1 end)

for i = 1, 50 do
  coroutine.wrap(function() -- luv: coroutines are resumed from callbacks
    local job = "report:" .. i % 5
    local lock <close>, err = locker:obtain(job, 10, 5)
    if lock then
      sleep(0.01) -- the work; other coroutines run meanwhile
      done = done + 1
    else
      print(("worker %d: %s"):format(i, err))
    end
    finished = finished + 1
  end)()
end

-- stop the ticker once every worker is through
local check = uv.new_timer()
check:start(10, 10, function()
  if finished == 50 then
    ticker:close()
    check:close()
  end
end)

uv.run()
print(("%d jobs done, ticker ran %d times meanwhile"):format(done, ticks))
