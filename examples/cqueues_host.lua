-- fluxalock inside a cqueues event loop: 50 coroutines share 5 jobs; each
-- waits for its job's lock without blocking the loop, and a ticker keeps
-- running the whole time.
--
--   FLUXALOCK_URL=redis://127.0.0.1:6379/0 lua5.4 examples/cqueues_host.lua
local cqueues = require "cqueues"
local fluxalock = require "fluxalock"

fluxalock.configure { host = "cqueues" } -- every wait yields to the cqueue
local locker = fluxalock.locker()

local cq = cqueues.new()
local done, finished, ticks = 0, 0, 0

for i = 1, 50 do
  cq:wrap(function()
    local job = "report:" .. i % 5
    local lock <close>, err = locker:obtain(job, 10, 5)
    if lock then
      cqueues.sleep(0.01) -- the work; other coroutines run meanwhile
      done = done + 1
    else
      print(("worker %d: %s"):format(i, err))
    end
    finished = finished + 1
  end) -- <close> releases here, yielding to the loop as well
end

cq:wrap(function() -- proof that nothing blocks: it keeps ticking
  while finished < 50 do
    cqueues.sleep(0.005)
    ticks = ticks + 1
  end
end)

assert(cq:loop())
print(("%d jobs done, ticker ran %d times meanwhile"):format(done, ticks))
