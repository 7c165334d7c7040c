-- Safety, demonstrated: the checker of tools/safety/check.lua on histories
-- made by hand, then a short fault schedule (tools/safety/run.lua, a fixed
-- seed, every kind of fault at least once) with real worker processes,
-- redis-servers, proxies and sentinels.  The long run is `make safety`.
package.path = "tools/?.lua;examples/?.lua;" .. package.path
local check = require "safety.check"

-- a history from lines of words; 'leg' lines first
local function history(lines) return check.parse(table.concat(lines, "\n")) end

local FENCED = "op=leg leg=a store=fenced host=proc workers=2 replicas=0 seconds=10"
local FORCE = "op=leg leg=a store=force host=proc workers=2 replicas=0 seconds=10"

-- a round of worker w: obtained at t, read at rseq, wrote value at wseq
local function round(w, fence, t, rseq, rvalue, wseq, finish, write)
  return ("op=write leg=a w=%d fence=%d renew=0 obtained=%.3f read=accepted rseq=%d rvalue=%d "
    .. "start=%.3f finish=%.3f write=%s %s value=%d released=%.3f"):format(
    w, fence, t, rseq, rvalue, finish - 0.01, finish, write or "accepted",
    wseq and ("wseq=%d"):format(wseq) or "", rvalue + 1, finish + 0.001)
end

describe("the safety checker", function()
  it("passes a history in which the fenced store refused the paused holder's late write", function()
    local legs, failures = check.run(history {
      FENCED,
      round(2, 2, 1.5, 3, 0, 4, 1.6),                 -- took over once 1's lease ran out
      round(1, 1, 0.0, 1, 0, nil, 2.5, "refused"),    -- paused from 0.1 to 2.4, then refused
      round(2, 3, 2.6, 5, 1, 6, 2.7),
      "op=fault leg=a kind=stop at=0.1 w=1 dur=2.3",
    })
    assert.same({}, failures)
    assert.equal(1, #legs)
    local l = legs[1]
    assert.equal(1, l.overlaps)      -- 1's section (0 .. 2.5) and 2's (1.5 .. 1.6)
    assert.equal(0, l.stale)
    assert.equal(0, l.lost_updates)
    assert.equal(2, l.accepted)
    assert.equal(1, l.refused)
    assert.same({ stop = 1 }, l.faults)
  end)

  it("fails a history in which the fenced store took a stale write", function()
    local _, failures = check.run(history {
      FENCED,
      round(2, 2, 1.5, 2, 0, 3, 1.6),
      round(1, 1, 0.0, 1, 0, 4, 2.5), -- taken after fence 2 wrote: stale
    })
    assert.same({ "a: the fenced store took 1 stale write(s)", "a: the fenced store lost 1 update(s)" }, failures)
  end)

  -- histories of a fenced store with one stale write
  for _, c in ipairs {
    { "fails a stale write even when the newer holder had only read", {
      FENCED,
      round(1, 1, 0.0, 1, 0, 3, 2.5),                 -- wrote after fence 2's read
      round(2, 2, 1.5, 2, 0, nil, 2.6, "refused"),
    } },
    { "fails two writes of one fence by two workers (a fence a failover handed out twice)", {
      FENCED,
      round(1, 5, 0.0, 1, 0, 2, 0.1),
      round(2, 5, 0.05, 3, 1, 4, 0.2),
    } },
  } do
    it(c[1], function()
      local legs, failures = check.run(history(c[2]))
      assert.equal(1, legs[1].stale)
      assert.same({ "a: the fenced store took 1 stale write(s)" }, failures)
    end)
  end

  it("counts, without failing, what a store without fencing took", function()
    local legs, failures = check.run(history {
      FORCE,
      round(2, 2, 1.5, 2, 0, 3, 1.6),
      round(1, 1, 0.0, 1, 0, 4, 2.5),
    })
    assert.same({}, failures)
    assert.equal(1, legs[1].stale)
    assert.equal(1, legs[1].lost_updates)
  end)

  it("fails a lock a failover lost only when a replica had acknowledged it", function()
    local legs, failures = check.run(history {
      "op=leg leg=a store=fenced host=proc workers=2 replicas=0 seconds=10",
      "op=probe leg=a replicas=0 acked=1 lost=0",
      "op=probe leg=a replicas=0 acked=1 lost=1",
      "op=leg leg=b store=fenced host=proc workers=2 replicas=1 seconds=10",
      "op=probe leg=b replicas=1 acked=1 lost=1",
    })
    assert.equal(2, legs[1].probes)
    assert.equal(1, legs[1].probes_lost)
    assert.same({ "b: 1 lock(s) acknowledged by a replica were lost by a failover" }, failures)
  end)

  it("prints a table with a row per leg", function()
    local legs = check.run(history { FENCED, round(1, 1, 0, 1, 0, 2, 0.1) })
    local t = check.table(legs)
    assert.matches("^| leg | store |", t)
    local row = "\n| a | fenced | 2 | 10 | 1 | 1 | 0 | 0 | 0 | none | 0 | 0 | 0 | – |\n"
    assert.equal(#t - #row + 1, t:find(row, 1, true), t)
  end)
end)

describe("a short fault schedule (seed 20)", function()
  it("lets no stale write through the fenced store and loses no lock acknowledged by a replica", function()
    local run = require "safety.run"
    local legs, failures, path = run.run { seed = 20, seconds = 20, workers = 3 }
    finally(function() os.remove(path) end)
    local report = check.table(legs)
    assert.same({}, failures, report)
    local by, faults, overlaps = {}, {}, 0
    for _, l in ipairs(legs) do
      by[l.leg] = l
      for k, n in pairs(l.faults) do faults[k] = (faults[k] or 0) + n end
      overlaps = overlaps + l.overlaps
      -- every leg did real work through its faults
      assert.is_true(l.accepted > 10, report)
    end
    for _, k in ipairs(check.KINDS) do assert.is_true((faults[k] or 0) >= 1, k .. "\n" .. report) end
    for _, name in ipairs { "fenced", "failover", "failover-replicas", "luv" } do
      assert.equal(0, by[name].stale, report)
      assert.equal(0, by[name].lost_updates, report)
    end
    -- pauses longer than the ttl made two holders at once: what fencing is for
    assert.is_true(overlaps > 0, report)
    -- with replicas = 1 every failover kept the locks it had acknowledged
    local r = by["failover-replicas"]
    assert.is_true(r.probes >= 1, report)
    assert.equal(0, r.probes_lost, report)
  end)
end)
