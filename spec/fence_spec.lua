-- Fencing tokens: lock:fence() is the INCR of <prefix>fluxalock:fence at
-- obtain: strictly increasing over every acquisition of a key, kept in a key
-- that never expires, one counter per prefix (a bounded number of keys).
local R = require "support.redis"

describe("lock:fence()", function()
  local server, fl, locker
  R.setup({}, function(e) server, fl, locker = e.server, e.fluxalock, e.locker end)

  it("strictly increases with every fresh acquisition of a key", function()
    local last = 0
    for _ = 1, 50 do
      local lock = assert(locker:obtain("fenced", 5))
      assert.is_true(math.type(lock:fence()) == "integer")
      assert.is_true(lock:fence() > last)
      last = lock:fence()
      assert.is_true(lock:release())
    end
  end)

  it("also increases across expiry and take-over", function()
    local a = assert(locker:obtain("fenced-exp", 0.05))
    R.until_true(function() return server:cli("EXISTS", "fenced-exp") == "0" end, 5, "expiry")
    local b = assert(locker:obtain("fenced-exp", 5))
    assert.is_true(b:fence() > a:fence())
    assert.is_false(a:release())
    assert.is_true(b:release())
  end)

  it("is kept by a failed obtain, and read locally (no round trip)", function()
    local a = assert(locker:obtain("fenced-busy", 5))
    local f = a:fence()
    assert.same({ nil, "not obtained", "not_obtained" }, { locker:obtain("fenced-busy", 5) })
    server:pause() -- fence() must not ask Redis
    local ok, g = pcall(a.fence, a)
    server:resume()
    assert.is_true(ok)
    assert.equal(f, g)
    assert.is_true(a:release())
    assert.equal(f, a:fence(), "a released lock keeps its fence")
  end)

  it("lives in one key per prefix that never expires", function()
    for i = 1, 100 do assert(locker:obtain("many-" .. i, 5)):release() end
    assert.equal("-1", server:cli("PTTL", "fluxalock:fence"), "no expiry")
    local keys = server:cli("KEYS", "*fluxalock:fence*") -- not the wake-ups of keys "fenced..."
    assert.equal("fluxalock:fence", keys, "a single counter for all keys")
    local p = fl.locker { url = server.url, prefix = "app:" }
    local lock = assert(p:obtain("x", 5))
    assert.equal(tostring(lock:fence()), server:cli("GET", "app:fluxalock:fence"))
    assert.is_true(lock:release())
  end)
end)
