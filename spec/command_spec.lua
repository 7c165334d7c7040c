-- The fluxalock command (bin/fluxalock): real processes, a real
-- redis-server.  Each run starts bin/fluxalock through fluxalock.proc
-- (its own session, default signal dispositions) with LUA_PATH and
-- LUA_CPATH unset, so it also finds this checkout's build by itself.
-- Commands report what happened to them in files of a private directory;
-- those files and the processes' exits are the synchronisation.
local R = require "support.redis"
local proc = require "fluxalock.proc"

local ROOT = R.sh("pwd"):gsub("%s+$", "")
local BIN = ROOT .. "/bin/fluxalock"
local q = R.quote

local read, write = R.read, R.write

local function exists(path) return read(path) ~= nil end

-- start fluxalock with args; o.url (default: the server's), o.stdin (a
-- string), o.cwd, o.env (more variables)
local function start(server, args, o)
  o = o or {}
  local dir = R.tmpdir("cmd")
  write(dir .. "/in", o.stdin or "")
  local words = {}
  for i, a in ipairs(args) do words[i] = q(a) end
  local unset = {}
  for _, v in ipairs { "LUA_PATH", "LUA_CPATH", "LUA_PATH_5_4", "LUA_CPATH_5_4" } do
    if not (o.env and o.env[v]) then unset[#unset + 1] = "-u " .. v end
  end
  local script = ("cd %s && exec env %s %s %s <%s >%s 2>%s")
    :format(q(o.cwd or ROOT), table.concat(unset, " "), q(BIN), table.concat(words, " "), q(dir .. "/in"), q(dir .. "/out"), q(dir .. "/err"))
  if o.job then
    -- a job of a shell: fluxalock in a process group of its own under a
    -- shell of the same session, as a terminal's job is (a stop signal to
    -- a group with no such parent, an orphaned one, is discarded)
    script = script:gsub("exec env", "perl -e 'setpgrp(0, 0); exec @ARGV or die' env", 1)
      .. (" & echo $! > %s; wait $!"):format(q(dir .. "/job"))
  end
  local env = { FLUXALOCK_URL = o.url or server.url, D = dir }
  for k, v in pairs(o.env or {}) do env[k] = v end
  local pid = assert(proc.spawn({ "/bin/sh", "-c", script }, env))
  return { pid = pid, dir = dir }
end

-- wait for a started fluxalock: exit status (128+n for signal n), stdout,
-- stderr
local function finish(h, timeout)
  local what, n
  repeat what, n = proc.wait(h.pid, timeout or 30) until what ~= "forward"
  assert(what == "exit" or what == "signal", "fluxalock did not end: " .. tostring(what))
  return what == "signal" and 128 + n or n, read(h.dir .. "/out"), read(h.dir .. "/err")
end

local function run(server, args, o)
  return finish(start(server, args, o))
end

local function kill(pid, sig) os.execute(("kill -s %s %d"):format(sig, pid)) end

describe("the fluxalock command", function()
  local server, fluxalock, locker
  R.setup({}, function(e) server, fluxalock, locker = e.server, e.fluxalock, e.locker end)

  before_each(function() server:cli("FLUSHALL") end)

  describe("exit status", function()
    it("is the command's own, and the lock is released after it", function()
      local code, out, err = run(server, { "job", "sh", "-c", "redis-cli -s \"$1\" exists job; exit 7", "sh", server.socket })
      assert.equal(7, code)
      assert.equal("1\n", out) -- held while the command ran
      assert.equal("", err)
      assert.equal("0", server:cli("EXISTS", "job"))
    end)

    it("is 128+n when the command is killed by signal n", function()
      assert.equal(128 + 15, (run(server, { "job", "-c", "kill -TERM $$" })))
      assert.equal(128 + 9, (run(server, { "job", "-c", "kill -KILL $$" })))
    end)

    it("is the conflict code (-E, default 1) when another holder has the lock; the command never runs", function()
      local lock = assert(locker:obtain("job", 30))
      local h = start(server, { "-n", "-E", "3", "job", "-c", "touch \"$D/ran\"" })
      assert.equal(3, (finish(h)))
      assert.is_false(exists(h.dir .. "/ran"))
      local code, _, err = run(server, { "--conflict-exit-code=4", "job", "true" })
      assert.equal(4, code)
      assert.equal("", err)
      assert.equal(1, (run(server, { "job", "true" })))
      assert.is_true(lock:release())
    end)

    it("is 127 or 126 when the command cannot be run, and the lock is released", function()
      local code, _, err = run(server, { "job", "no-such-command-here" })
      assert.equal(127, code)
      assert.matches("^fluxalock: no%-such%-command%-here: No such file or directory\n$", err)
      assert.equal(126, (run(server, { "job", ROOT })))
      assert.equal("0", server:cli("EXISTS", "job"))
    end)
  end)

  describe("options", function()
    local function usage(args)
      local code, out, err = run(server, args)
      assert.equal(64, code, table.concat(args, " "))
      assert.equal("", out)
      assert.matches("^fluxalock: [^\n]+\nusage: fluxalock %[options%] KEY COMMAND", err)
      return err
    end

    it("exits 64 with a usage line on a bad option, naming it; nothing runs", function()
      assert.matches("unknown option '%-q'", usage { "-q", "job", "true" })
      assert.matches("unknown option '%-%-frobnicate'", usage { "--frobnicate=1", "job", "true" })
      assert.matches("%-%-ttl wants a positive number of seconds, got 'abc'", usage { "--ttl=abc", "job", "true" })
      assert.matches("%-t wants a positive number", usage { "-t", "0", "job", "true" })
      assert.matches("%-w wants a non%-negative number", usage { "-w", "-1", "job", "true" })
      assert.matches("%-E wants an exit status 0%-255, got '256'", usage { "-E", "256", "job", "true" })
      assert.matches("%-%-grace needs a value", usage { "--grace" })
      assert.matches("no KEY given", usage {})
      assert.matches("no COMMAND given", usage { "job" })
      assert.matches("not both", usage { "job", "-c", "true", "extra" })
      assert.matches("%-n takes no value", usage { "-n5", "job", "true" })
      assert.matches("bad URL", usage { "-u", "http//nothing", "job", "true" })
      assert.equal("0", server:cli("EXISTS", "job"))
    end)

    it("takes --opt=value, --opt value, -tVALUE, and -- before a KEY that starts with '-'", function()
      local code, out = run(server, { "--ttl", "5", "-t5", "--wait=0", "--", "-job", "sh", "-c", "echo \"$FLUXALOCK_KEY\"" })
      assert.equal(0, code)
      assert.equal("-job\n", out)
      code, out = run(server, { "job", "--command=echo shell" })
      assert.equal(0, code)
      assert.equal("shell\n", out)
      -- after KEY, the command's own options are its own
      code, out = run(server, { "job", "echo", "-n", "--ttl" })
      assert.equal(0, code)
      assert.equal("--ttl", out)
    end)

    it("prints help (-h, --help) and the version (--version) on stdout", function()
      for _, h in ipairs { "-h", "--help" } do
        local code, out, err = run(server, { h })
        assert.equal(0, code)
        assert.equal("", err)
        assert.matches("^usage: fluxalock %[options%] KEY COMMAND", out)
        assert.matches("%-%-lost%-exit%-code N", out)
      end
      local code, out = run(server, { "--version" })
      assert.equal(0, code)
      assert.equal(fluxalock._VERSION .. "\n", out)
    end)

    it("uses its own checkout when LUA_PATH/LUA_CPATH are unset, and them when set", function()
      local code, out = run(server, { "--version" }, { cwd = "/" })
      assert.equal(0, code)
      assert.equal(fluxalock._VERSION .. "\n", out)
      local h = start(server, { "--version" }, { env = { LUA_PATH_5_4 = "/nonexistent/?.lua" } })
      local code2, _, err = finish(h)
      assert.is_not.equal(0, code2)
      assert.matches("module 'fluxalock' not found", err)
    end)
  end)

  describe("Redis", function()
    it("unreachable: exits 69, says why on stderr, and the command never starts", function()
      -- a port nobody listens on, and no other job's server can take
      local url = ("redis://user:s3cretpw@127.0.0.1:%d/0"):format(R.free_port())
      for _, via in ipairs { "-u", "env" } do
        local args = { "job", "-c", "touch \"$D/ran\"" }
        local o = {}
        if via == "-u" then table.insert(args, 1, url) table.insert(args, 1, "-u") else o.url = url end
        local h = start(server, args, o)
        local code, out, err = finish(h)
        assert.equal(69, code)
        assert.equal("", out)
        assert.matches("^fluxalock: connect 127%.0%.0%.1:%d+: Connection refused\n$", err)
        assert.is_false(exists(h.dir .. "/ran"))
      end
    end)

    it("answering with an error (bad password): exits 69 and prints no password", function()
      local s = R.start { args = { "--requirepass", "right-pw" }, password = "right-pw" }
      local h = start(server, { "-u", ("redis://:wrong-pw@127.0.0.1:%d/0"):format(s.port), "job", "-c", "touch \"$D/ran\"" })
      local code, _, err = finish(h)
      s:stop()
      assert.equal(69, code)
      assert.matches("^fluxalock: ", err)
      assert.is_nil(err:find("wrong-pw", 1, true))
      assert.is_false(exists(h.dir .. "/ran"))
    end)
  end)

  describe("the command's world", function()
    it("gets FLUXALOCK_KEY and FLUXALOCK_FENCE (the lock's fencing token, growing)", function()
      local _, out1 = run(server, { "nightly", "sh", "-c", "echo \"$FLUXALOCK_KEY $FLUXALOCK_FENCE\"" })
      local _, out2 = run(server, { "nightly", "sh", "-c", "echo \"$FLUXALOCK_KEY $FLUXALOCK_FENCE\"" })
      local f1, f2 = tonumber(out1:match("^nightly (%d+)\n$")), tonumber(out2:match("^nightly (%d+)\n$"))
      assert.is_true(f1 ~= nil and f2 ~= nil and f2 > f1, out1 .. out2)
      assert.equal(tostring(f2), server:cli("GET", "fluxalock:fence"))
    end)

    it("has fluxalock's stdin and stdout", function()
      local input = ("line %d\n"):rep(1000):gsub("%%d", "x")
      local code, out, err = run(server, { "job", "cat" }, { stdin = input })
      assert.equal(0, code)
      assert.equal(input, out)
      assert.equal("", err)
    end)
  end)

  describe("waiting and renewal", function()
    it("-w waits, past its own ttl, and obtains when the holder's lock ends", function()
      local lock = assert(locker:obtain("job", 2))
      local t0 = R.now()
      local code, out = run(server, { "-t", "1", "-w", "6", "job", "echo", "ran" })
      assert.equal(0, code)
      assert.equal("ran\n", out)
      assert.is_true(R.now() - t0 > 1.5) -- it did wait for the 2 s lock
      assert.is_false(lock:release())
    end)

    it("-w waits and obtains as soon as the holder releases", function()
      local lock = assert(locker:obtain("job", 30))
      local h = start(server, { "-w", "20", "job", "echo", "ran" })
      -- fluxalock has asked once the server has seen a second client
      R.until_true(function()
        local n = 0
        for _ in server:cli("CLIENT", "LIST"):gmatch("id=") do n = n + 1 end
        return n >= 3 -- ours, redis-cli's, fluxalock's
      end, 10, "fluxalock's connection")
      assert.is_true(lock:release())
      local t0 = R.now()
      local code, out = finish(h)
      assert.equal(0, code)
      assert.equal("ran\n", out)
      assert.is_true(R.now() - t0 < 5)
    end)

    it("keeps a ttl-1 lock alive while a 3 s command runs; another fluxalock -n gets the conflict code", function()
      local h = start(server, { "-t", "1", "job", "-c", "touch \"$D/started\"; sleep 3" })
      R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
      local low, other = math.huge, nil
      local stop = R.now() + 2.5
      while R.now() < stop do
        low = math.min(low, tonumber(server:cli("PTTL", "job")))
        if not other then other = run(server, { "-n", "-E", "9", "job", "true" }) end
        R.sleep(0.05)
      end
      assert.is_true(low > 0, "PTTL fell to " .. low)
      assert.equal(9, other)
      assert.equal(0, (finish(h)))
      assert.equal("0", server:cli("EXISTS", "job"))
    end)
  end)

  describe("a lost lock", function()
    -- the command: a shell that records SIGTERM, and its child, a shell
    -- that records SIGTERM too (the grandchild of fluxalock)
    local function family(dir)
      write(dir .. "/grand.sh", [[
trap 'echo grandchild >> "$D/grand"; exit 0' TERM
touch "$D/grand.started"
while :; do sleep 0.05; done
]])
      return [[
trap 'echo child >> "$D/child"; wait; exit 0' TERM
sh "$D/grand.sh" &
while [ ! -e "$D/grand.started" ]; do sleep 0.01; done
touch "$D/started"
wait
]]
    end

    for _, how in ipairs { "DEL", "SET" } do
      it("(" .. how .. " by another client): SIGTERM to the command and its children, then the lost code", function()
        local dir = R.tmpdir("cmd")
        local h = start(server, { "-t", "1.5", "job", "-c", family(dir) }, { env = { D = dir } })
        R.until_true(function() return exists(dir .. "/started") end, 10, "the command family")
        if how == "DEL" then server:cli("DEL", "job") else server:cli("SET", "job", "someone-else") end
        local t0 = R.now()
        local code, _, err = finish(h, 10)
        assert.equal(75, code)
        assert.is_true(R.now() - t0 < 1.5, "lost noticed after " .. (R.now() - t0) .. " s")
        assert.equal("child\n", read(dir .. "/child"))
        assert.equal("grandchild\n", read(dir .. "/grand"))
        assert.matches("^fluxalock: lost the lock \"job\"", err)
        if how == "SET" then assert.equal("someone-else", server:cli("GET", "job")) end
      end)
    end

    it("(Redis frozen, renewals failing): SIGTERM within the ttl, at the local deadline, not after", function()
      local h = start(server, { "-t", "3", "job", "-c",
        "trap 'touch \"$D/term\"; exit 0' TERM; touch \"$D/started\"; while :; do sleep 0.05; done" })
      R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
      -- freeze Redis some 0.7 s after a renewal: the key then expires in
      -- Redis at most 2.3 s after the pause, and renewal can confirm nothing
      R.until_true(function() return tonumber(server:cli("PTTL", "job")) <= 2300 end, 5, "PTTL <= 2300")
      local paused = R.now()
      server:pause()
      finally(function() server:resume() end)
      R.until_true(function() return exists(h.dir .. "/term") end, 10, "SIGTERM to the command")
      local after = R.now() - paused
      assert.is_true(after < 3, "SIGTERM came " .. after .. " s after Redis froze")
      assert.is_true(after > 1, "SIGTERM came already " .. after .. " s after Redis froze")
      server:resume()
      local code, _, err = finish(h, 15)
      assert.equal(75, code)
      assert.matches("^fluxalock: lost the lock", err)
    end)

    it("uses --lost-exit-code, and SIGKILLs the group after --grace when the command ignores SIGTERM", function()
      local h = start(server, { "-t", "1", "--grace", "0.5", "--lost-exit-code", "99", "job", "-c",
        "trap '' TERM; sleep 60 & echo $! > \"$D/sleeper\"; touch \"$D/started\"; wait; wait" })
      R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
      local sleeper = tonumber(read(h.dir .. "/sleeper"))
      server:cli("DEL", "job")
      local code, _, err = finish(h, 10)
      assert.equal(99, code)
      assert.matches("SIGKILL", err)
      R.until_true(function() return not R.alive(sleeper) end, 5, "the grandchild's end")
    end)
  end)

  describe("signals sent to fluxalock", function()
    for _, sig in ipairs { "INT", "TERM", "HUP", "QUIT" } do
      it("SIG" .. sig .. " is passed on, and the lock is released only after the command exits", function()
        local h = start(server, { "job", "-c", ([[
ulimit -c 0
trap 'redis-cli -s "$S" exists job > "$D/during"; echo got > "$D/sig"; exit 5' %s
touch "$D/started"
while :; do sleep 0.05; done
]]):format(sig) }, { env = { S = server.socket } })
        R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
        kill(h.pid, sig)
        local code = finish(h)
        assert.equal(5, code)
        assert.equal("got\n", read(h.dir .. "/sig"))
        assert.equal("1\n", read(h.dir .. "/during")) -- still held while the trap ran
        assert.equal("0", server:cli("EXISTS", "job"))
      end)
    end

    -- issue 17, item 7: a fluxalock that cannot pass anything on
    it("SIGKILL: the command and its children die with fluxalock (not left running without the lock)", function()
      -- the command (a shell) and its child (a sleep in the background)
      local h = start(server, { "-t", "2", "job", "-c", [[
sleep 60 &
echo $! > "$D/grand"
echo $$ > "$D/pid.tmp"; mv "$D/pid.tmp" "$D/pid"
wait]] })
      R.until_true(function() return exists(h.dir .. "/pid") end, 10, "the command")
      local child, grand = tonumber(read(h.dir .. "/pid")), tonumber(read(h.dir .. "/grand"))
      assert.is_true(R.alive(child) and R.alive(grand))
      kill(h.pid, "KILL")
      assert.equal(128 + 9, (finish(h)))
      -- killed as fluxalock dies, reparented and reaped by init: gone
      R.until_true(function() return not R.alive(child) end, 5, "the command's death")
      R.until_true(function() return not R.alive(grand) end, 5, "the death of the command's child")
    end)

    it("SIGTSTP (Ctrl-Z) does not stop fluxalock while the command runs: the lock is still renewed", function()
      -- the command runs until the spec is done (the file stop): a fixed
      -- run could end, and fluxalock with it, before a loaded machine's checks
      local h = start(server, { "-t", "1", "job", "-c",
        "touch \"$D/started\"; i=0; while [ ! -e \"$D/stop\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done" },
        { job = true })
      R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
      local fl = tonumber(read(h.dir .. "/job"))
      kill(fl, "TSTP")
      local t0, low = R.now(), math.huge
      while R.now() - t0 < 2 do -- twice the ttl: without renewals the key is gone
        low = math.min(low, tonumber(server:cli("PTTL", "job")))
        R.sleep(0.05)
      end
      -- a stopped process has state T in /proc/<pid>/stat
      local state = (read("/proc/" .. fl .. "/stat") or ""):match("^%d+ %b() (%a)")
      if state == "T" then kill(fl, "CONT") end
      write(h.dir .. "/stop", "")
      assert.is_truthy(state)
      assert.is_true(state ~= "T", "fluxalock was stopped")
      assert.is_true(low > 0, "PTTL fell to " .. low .. ": not renewed")
      assert.equal(0, (finish(h)))
      assert.equal("0", server:cli("EXISTS", "job"))
    end)

    it("a command without a handler dies of the signal: 128+n", function()
      local h = start(server, { "job", "-c", "touch \"$D/started\"; exec sleep 60" })
      R.until_true(function() return exists(h.dir .. "/started") end, 10, "the command")
      kill(h.pid, "INT")
      assert.equal(130, (finish(h)))
      assert.equal("0", server:cli("EXISTS", "job"))
    end)
  end)

  describe("modes", function()
    local function list(key) return server:cli("LRANGE", key, "0", "-1") end

    -- each copy stays until a second one is inside too, or until no other
    -- copy is left to come (the last one): the copies meet in pairs
    -- however slowly they start, and a limit of 1 shows as a most of 1
    it("--limit 2 runs at most 2 copies at once across 6 invocations", function()
      local hs = {}
      for i = 1, 6 do
        hs[i] = start(server, { "-w", "20", "-t", "20", "--limit", "2", "job", "-c", [[
n=$(redis-cli -s "$S" incr running); redis-cli -s "$S" rpush seen "$n" >/dev/null
i=0
while [ $i -lt 1000 ]; do
  r=$(redis-cli -s "$S" get running); f=$(redis-cli -s "$S" get finished)
  if [ "$r" -ge 2 ] || [ $((${f:-0} + r)) -ge 6 ]; then break; fi
  sleep 0.01; i=$((i+1))
done
redis-cli -s "$S" decr running >/dev/null; redis-cli -s "$S" incr finished >/dev/null]] },
          { env = { S = server.socket } })
      end
      for i = 1, 6 do assert.equal(0, (finish(hs[i], 60))) end
      local most = 0
      for n in list("seen"):gmatch("%d+") do most = math.max(most, tonumber(n)) end
      assert.equal(2, most)
      assert.equal(6, select(2, list("seen"):gsub("%d+", "")))
    end)

    -- r: the readers inside now; arrived: the readers that ever came in.
    -- Each reader stays until all three came: none leaves before the last
    -- one is in, so all three were inside at once (a reader that polled
    -- r itself could miss the moment it was 3, once the first one left)
    it("-s copies run together while -x runs alone", function()
      local hs = {}
      for i = 1, 3 do
        hs[i] = start(server, { "-w", "20", "-t", "20", "-s", "job", "-c", [[
redis-cli -s "$S" incr r >/dev/null
i=0; v=$(redis-cli -s "$S" incr arrived)
while [ "$v" -lt 3 ] && [ $i -lt 1500 ]; do sleep 0.01; i=$((i+1)); v=$(redis-cli -s "$S" get arrived); done
redis-cli -s "$S" rpush together "$v" >/dev/null
redis-cli -s "$S" rpush readers-saw-x "$(redis-cli -s "$S" get x)" >/dev/null
redis-cli -s "$S" decr r >/dev/null]] }, { env = { S = server.socket } })
      end
      R.until_true(function() return server:cli("GET", "arrived") == "3" end, 20, "three readers")
      local x = start(server, { "-w", "20", "-t", "20", "-x", "job", "-c", [[
redis-cli -s "$S" incr x >/dev/null
redis-cli -s "$S" rpush writer-saw-r "$(redis-cli -s "$S" get r)" >/dev/null
redis-cli -s "$S" decr x >/dev/null]] }, { env = { S = server.socket } })
      for i = 1, 3 do assert.equal(0, (finish(hs[i], 60))) end
      assert.equal(0, (finish(x, 60)))
      assert.equal("3\n3\n3", list("together"))
      assert.is_nil(list("readers-saw-x"):find("1", 1, true)) -- no writer while they read
      assert.equal("0", list("writer-saw-r"))
    end)

    it("--fair copies started one after another run in their order", function()
      local held = assert(locker:obtain("job", 30, 0, { fair = true }))
      local hs = {}
      for i = 1, 4 do
        hs[i] = start(server, { "-w", "20", "-t", "20", "--fair", "job", "-c",
          ('redis-cli -s "$S" rpush order %d >/dev/null'):format(i) }, { env = { S = server.socket } })
        R.until_true(function() return locker:inspect("job").waiting == i end, 20, "copy " .. i)
      end
      assert.is_true(held:release())
      for i = 1, 4 do assert.equal(0, (finish(hs[i], 60))) end
      assert.equal("1\n2\n3\n4", list("order"))
    end)

    it("--inspect prints the key's state in each mode", function()
      local function inspect()
        local code, out, err = run(server, { "--inspect", "job" })
        assert.equal(0, code, err)
        assert.equal("", err)
        return (out:gsub("ttl=[%d.]+", "ttl=T"))
      end
      assert.equal("mode=free\nholders=0\nlimit=\nwaiting=0\nttl=T\n", inspect())
      local a = assert(locker:obtain("job", 30, 0, { limit = 3 }))
      local b = assert(locker:obtain("job", 30, 0, { limit = 3 }))
      assert.equal("mode=limit\nholders=2\nlimit=3\nwaiting=0\nttl=T\n", inspect())
      a:release()
      b:release()
      local s = assert(locker:obtain("job", 30, 0, { shared = true }))
      assert.equal("mode=shared\nholders=1\nlimit=\nwaiting=0\nttl=T\n", inspect())
      s:release()
      local x = assert(locker:obtain("job", 30))
      assert.equal("mode=exclusive\nholders=1\nlimit=\nwaiting=0\nttl=T\n", inspect())
      x:release()
      server:cli("SET", "job", "someone-else", "PX", "30000")
      assert.equal("mode=foreign\nholders=1\nlimit=\nwaiting=0\nttl=T\n", inspect())
      local code, _, err = run(server, { "--inspect", "job" }, { url = "redis://127.0.0.1:1" })
      assert.equal(69, code)
      assert.matches("^fluxalock: ", err)
    end)

    it("rejects a bad --limit, and --limit with -s", function()
      for _, args in ipairs { { "--limit", "0", "job", "true" }, { "--limit", "x", "job", "true" },
                              { "--limit", "2", "-s", "job", "true" } } do
        local code, _, err = run(server, args)
        assert.equal(64, code)
        assert.matches("^fluxalock: ", err)
      end
    end)
  end)
end)
