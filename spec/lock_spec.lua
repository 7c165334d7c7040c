local R = require "support.redis"

describe("a lock", function()
  local server, fluxalock, locker

  lazy_setup(function()
    server = R.start()
    fluxalock = R.fluxalock(server)
    locker = fluxalock.locker()
  end)

  lazy_teardown(function()
    if server then server:stop() end
  end)

  it("is obtained once, refused to a second contender, and released", function()
    local lock = assert(locker:obtain("basic", 5))
    assert.is_true(lock:held())
    local again, err = locker:obtain("basic", 5)
    assert.is_nil(again)
    assert.equal("not obtained", err)
    assert.equal(fluxalock.NOT_OBTAINED, err)
    assert.is_true(lock:release())
    assert.is_false(lock:release())
    assert.is_false(lock:held())
    assert.equal("0", server:cli("EXISTS", "basic"))
  end)
end)
