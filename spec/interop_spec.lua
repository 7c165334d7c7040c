-- fluxalock beside other lock clients on the same key: redis-py's Lock
-- (Debian's python3-redis) and node-redlock 5 on ioredis (npm, installed
-- by make deps, tools/node-deps.sh, into build/interop-npm; the spec never
-- installs anything).  Both release and refresh by comparing
-- the value they set, so fluxalock must never write to a key it does not
-- hold.  Each client runs a helper in spec/support/ (one line per step).
local R = require "support.redis"

local HERE = debug.getinfo(1, "S").source:match("^@(.*)interop_spec%.lua$")
-- FLUXALOCK_INTEROP_NPM: another directory (tools/checks/machine.sh names
-- an empty one, to see the spec say what is missing)
local NPM_DIR = os.getenv("FLUXALOCK_INTEROP_NPM") or HERE .. "../build/interop-npm"

local function sh_ok(cmd) return os.execute(cmd .. " >/dev/null 2>&1") == true end

-- each client's lacks() is nil when this machine can run it, else what
-- is missing: said once, as one failing case, not once per case
local clients = {
  {
    name = "redis-py's Lock",
    lacks = function()
      if not sh_ok("/usr/bin/python3 -c 'import redis'") then
        return "redis-py is missing: install the Debian package python3-redis (make deps)"
      end
    end,
    command = "/usr/bin/python3 " .. HERE .. "support/interop_redispy.py",
  },
  {
    name = "node-redlock",
    lacks = function()
      if not sh_ok("command -v node") then
        return "node is not on the PATH (Debian: nodejs; then make deps installs the npm packages)"
      end
      if not sh_ok(("test -f %s/node_modules/redlock/package.json -a -f %s/node_modules/ioredis/package.json")
               :format(NPM_DIR, NPM_DIR)) then
        return "node-redlock and ioredis are not in " .. NPM_DIR .. ": run make deps"
          .. " (sh tools/node-deps.sh: it needs npm and the npm registry)"
      end
    end,
    command = "NODE_PATH=" .. NPM_DIR .. "/node_modules node " .. HERE .. "support/interop_redlock.js",
  },
}

for _, client in ipairs(clients) do
  describe("beside " .. client.name, function()
    local server, fluxalock
    local lacks = client.lacks()
    if lacks then
      it("test machine: " .. client.name .. "'s client can run", function() error("test machine: " .. lacks, 0) end)
      return
    end

    R.setup({ locker = false }, function(e) server, fluxalock = e.server, e.fluxalock end)

    local function run(mode, key)
      return assert(io.popen(("%s %s %d %s 2>&1"):format(client.command, mode, server.port, key)))
    end

    it("keeps the holder's value while fluxalock waits: it extends and releases, then fluxalock obtains", function()
      local other = run("hold", "interop")
      local first = other:read("l")
      assert.equal("held true", (first or ""):lower())
      local t0 = R.now()
      local lock, err = fluxalock.locker():obtain("interop", 5, 4)
      local took = R.now() - t0
      local out = (first .. "\n" .. other:read("a")):lower()
      other:close()
      assert.is_nil(err, out)
      assert.truthy(lock, out)
      assert.is_nil(out:find("error", 1, true), out)
      assert.truthy(out:find("\nwaiter\n", 1, true), out)
      assert.truthy(out:find("\nvalue same\n", 1, true), "the holder's value was written to: " .. out)
      assert.truthy(out:find("\nextend true\n", 1, true), out)
      local pttl = tonumber(out:match("\npttl (%d+)\n"))
      assert.is_true(pttl ~= nil and pttl > 5000, "the refresh did not take: " .. out)
      assert.truthy(out:find("\nreleased\n", 1, true), out)
      assert.is_true(took < 4, "the waiter sat out its whole wait")
      assert.equal(lock:token(), server:cli("GET", "interop"))
      assert.is_true(lock:release())
    end)

    it("is excluded while fluxalock holds, and gets in after the release", function()
      local lock = assert(fluxalock.locker():obtain("interop-2", 5))
      local other = run("try", "interop-2")
      local out = other:read("a"):lower()
      other:close()
      assert.equal("acquired false\n", out)
      assert.equal(lock:token(), server:cli("GET", "interop-2"))
      assert.is_true(lock:release())
      other = run("try", "interop-2")
      out = other:read("a"):lower()
      other:close()
      assert.equal("acquired true\nreleased\n", out)
      assert.equal("0", server:cli("EXISTS", "interop-2"))
    end)
  end)
end
