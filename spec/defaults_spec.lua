-- configure{defaults = ...}: the defaults apply to every pool that does not
-- set an option itself, whether it was defined before, with, or after them.
local R = require "support.redis"

describe("configure defaults", function()
  local server, fluxalock

  lazy_setup(function()
    server = R.start()
    fluxalock = require "fluxalock"
  end)

  lazy_teardown(function()
    if server then server:stop() end
  end)

  it("reach a pool defined before them, which gets a new locker", function()
    fluxalock.configure { pools = { early = server.url } }
    local before = fluxalock.locker("early")
    fluxalock.configure { defaults = { prefix = "d1:" } }
    local after = fluxalock.locker("early")
    assert.are_not.equal(before, after)
    local lock = assert(after:obtain("k", 5))
    assert.equal(lock:token(), server:cli("GET", "d1:k"))
    assert.is_true(lock:release())
  end)

  it("do not override what a pool sets itself", function()
    fluxalock.configure { defaults = { prefix = "d2:" },
                          pools = { own = { url = server.url, prefix = "own:" } } }
    local lock = assert(fluxalock.locker("own"):obtain("k", 5))
    assert.equal(lock:token(), server:cli("GET", "own:k"))
    assert.equal("", server:cli("GET", "d2:k"))
    assert.is_true(lock:release())
  end)

  it("keep the same locker when they change nothing for a pool", function()
    fluxalock.configure { defaults = { prefix = "d3:" },
                          pools = { fixed = { url = server.url, prefix = "f:" } } }
    local l = fluxalock.locker("fixed")
    fluxalock.configure { defaults = { prefix = "d4:" } }
    assert.equal(l, fluxalock.locker("fixed"))
  end)

  it("are not applied at all when one pool would become invalid", function()
    fluxalock.configure { defaults = { retry_step = 0.005, retry_max = 0.1 },
                          pools = { capped = { url = server.url, retry_max = 0.02 } } }
    local l = fluxalock.locker("capped")
    -- retry_step 0.05 > this pool's retry_max: the whole call is refused
    assert.has_error(function()
      fluxalock.configure { defaults = { retry_step = 0.05 } }
    end, "fluxalock.configure: pool 'capped': option 'retry_max' must not be below retry_step")
    assert.equal(l, fluxalock.locker("capped"))
    local lock = assert(l:obtain("still-works", 1))
    assert.is_true(lock:release())
  end)
end)
