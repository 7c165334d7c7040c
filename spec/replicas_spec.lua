-- WAIT for replicas: with replicas = n a lock (or a refresh) counts only
-- once n replicas have acknowledged it; real master and replica servers.
local R = require "support.redis"

describe("a pool with replicas = 1", function()
  local master, replica, fluxalock, locker

  R.setup_pair(function(e)
    master, replica = e.master, e.replica
    fluxalock = require "fluxalock"
    fluxalock.configure { pools = {
      default = { url = master.url, replicas = 1, replica_timeout = 0.2 },
      two = { url = master.url, replicas = 2, replica_timeout = 0.05 },
    } }
    locker = fluxalock.locker()
  end)

  it("obtains and refreshes once the replica has the lock", function()
    local lock = assert(locker:obtain("w-ok", 5))
    -- acknowledged: the replica has it already, no polling needed
    assert.equal("1", replica:cli("EXISTS", "w-ok"))
    assert.is_true(lock:refresh(5))
    assert.is_true(lock:release())
  end)

  it("refuses a lock the replicas did not acknowledge, and leaves nothing behind", function()
    local lock, err = fluxalock.locker("two"):obtain("w-two", 5)
    assert.is_nil(lock)
    assert.equal("fluxalock: obtain 127.0.0.1:" .. master.port .. ": 1 of 2 replicas acknowledged the lock", err)
    assert.equal("0", master:cli("EXISTS", "w-two"))
  end)

  it("gives a NOSCRIPT retry its own time, after the WAIT of the failed try", function()
    -- the first try's WAIT waits for nothing (its script was missing) and
    -- may use all of replica_timeout: the retry must not inherit that
    fluxalock.configure { pools = { tight = { url = master.url, replicas = 2, replica_timeout = 0.25,
                                              timeout = 0.3 } } }
    local l = fluxalock.locker("tight")
    assert.is_nil(l:obtain("w-warm", 5)) -- connected, scripts cached
    assert.equal("OK", master:cli("SCRIPT", "FLUSH"))
    local lock, err = l:obtain("w-flushed", 5)
    assert.is_nil(lock)
    assert.equal("fluxalock: obtain 127.0.0.1:" .. master.port .. ": 1 of 2 replicas acknowledged the lock", err)
  end)

  it("reports a refresh the paused replica did not acknowledge", function()
    local lock = assert(locker:obtain("w-pause", 5))
    replica:pause() -- SIGSTOP: it acknowledges nothing
    local t0 = R.now()
    local ok, err = lock:refresh(5)
    local lock2, err2 = locker:obtain("w-pause2", 5)
    replica:resume()
    assert.is_nil(ok)
    assert.equal("fluxalock: refresh 127.0.0.1:" .. master.port .. ": 0 of 1 replicas acknowledged the refresh", err)
    assert.is_nil(lock2)
    assert.matches("^fluxalock: obtain .*: 0 of 1 replicas acknowledged the lock$", err2)
    assert.is_true(R.now() - t0 < 2, "did not hang")
    assert.equal("0", master:cli("EXISTS", "w-pause2"))
    assert.is_true(lock:held()) -- still this holder's on the master
    assert.is_true(lock:release())
  end)

  it("validates the options of the pool kinds", function()
    local function msg(pool)
      local ok, err = pcall(fluxalock.configure, { pools = { x = pool } })
      assert.is_false(ok)
      return err
    end
    assert.equal("fluxalock.configure: pool 'x': option 'sentinels' needs 'master' (the name the sentinels monitor)",
      msg { sentinels = { "127.0.0.1:26379" } })
    assert.equal("fluxalock.configure: pool 'x': option 'master' needs 'sentinels'", msg { master = "m" })
    assert.equal("fluxalock.configure: pool 'x': option 'sentinels' entry 1 must be 'host:port', got 'nohost'",
      msg { sentinels = { "nohost" }, master = "m" })
    assert.equal("fluxalock.configure: pool 'x': option 'cluster' must not be empty", msg { cluster = {} })
    assert.equal("fluxalock.configure: pool 'x': option 'cluster' must be a list of strings, got string",
      msg { cluster = "127.0.0.1:7000" })
    assert.matches("option '%a+' cannot be combined with '%a+'",
      msg { cluster = { "127.0.0.1:7000" }, redlock = { "redis://127.0.0.1" } })
    assert.equal("fluxalock.configure: pool 'x': option 'cluster' replaces url/host/port/path: give the servers in the list",
      msg { cluster = { "127.0.0.1:7000" }, port = 7000 })
    assert.equal("fluxalock.configure: pool 'x': option 'db' must be 0 on a cluster",
      msg { cluster = { "127.0.0.1:7000" }, db = 1 })
    assert.matches("^fluxalock.configure: pool 'x' node '2': option 'url' ",
      msg { redlock = { "redis://127.0.0.1:1", "http://x" } })
    -- a password in a Redlock URL never shows in tostring
    local l = fluxalock.locker { redlock = { "redis://:s3cret@127.0.0.1:1", "redis://127.0.0.1:2" } }
    assert.equal("fluxalock.Locker: redlock:2 nodes (redlock:2 nodes)", tostring(l))
    assert.is_nil(select(2, l:obtain("k", 1)):find("s3cret", 1, true))
  end)

  it("validates the options", function()
    assert.has_error(function()
      fluxalock.configure { pools = { x = { replicas = -1 } } }
    end, "fluxalock.configure: pool 'x': option 'replicas' must be from 0 to 1000")
    assert.has_error(function()
      fluxalock.configure { pools = { x = { replica_timeout = 1 } } }
    end, "fluxalock.configure: pool 'x': option 'replica_timeout' needs 'replicas'")
  end)
end)

describe("a renewed lock with replicas = 1", function()
  local master, replica, fluxalock

  R.setup_pair(function(e)
    master, replica = e.master, e.replica
    fluxalock = require "fluxalock"
  end)

  it("is found lost after its deadline once its replica stops acknowledging the renewals", function()
    fluxalock.configure { pools = { renewed = { url = master.url, replicas = 1, replica_timeout = 0.1 } } }
    local l = fluxalock.locker("renewed")
    local lock = assert(l:obtain("w-renewed", 1, 0, { renew = 0.2 }))
    -- renewed, acknowledged: alive past its ttl
    R.until_true(function() return l:stats().renewed >= 6 end, 5, "renewals")
    assert.is_true(lock:held())
    assert.equal("1", replica:cli("EXISTS", "w-renewed"))
    -- from before the stop: its own time (SIGTERM, the exit, the port's
    -- close) is no part of the deadline's margin
    local t0 = R.now()
    replica:stop() -- by PID: no replica acknowledges the renewals any more
    R.until_true(function() return not lock:held() end, 5, "the lock to be found lost")
    -- the master still has it (each unacknowledged renewal was written there):
    -- the renewals were refused for want of a replica, not for a lost key
    assert.equal("1", master:cli("EXISTS", "w-renewed"))
    assert.is_true(R.now() - t0 >= 0.5, "lost before its deadline")
    -- held() is false from the deadline on; the renewal thread counts the
    -- loss when its poll wakes for it, later on a loaded machine (seen)
    R.until_true(function() return l:stats().lost >= 1 end, 5, "the loss to be counted")
    lock:release()
  end)
end)
