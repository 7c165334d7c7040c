-- Misuse raises with a message that points at the caller's line (the error
-- level), never at a line inside fluxalock: the user must see where they
-- went wrong.  No Redis is needed: misuse is caught before any request.
local fluxalock = require "fluxalock"

describe("misuse errors point at the caller's line", function()
  local locker = fluxalock.locker("redis://127.0.0.1:1/0") -- never connected

  local cases = {
    { 'locker:obtain("k", "x")', "bad argument #2 to 'obtain' (ttl must be a number of seconds, got string)" },
    { 'locker:obtain("k", 0.0001)', "bad argument #2 to 'obtain' (ttl must be at least 0.001 seconds)" },
    { 'locker:obtain("k", 0 / 0)', "bad argument #2 to 'obtain' (ttl must not be NaN)" },
    { 'locker:obtain("k", 2e9)', "bad argument #2 to 'obtain' (ttl must not exceed 1e9 seconds)" },
    { 'locker:obtain("k", 1, 2)', "bad argument #3 to 'obtain' (wait timeout must not exceed ttl)" },
    { 'locker:obtain("k", 1, -1)', "bad argument #3 to 'obtain' (wait timeout must not be negative)" },
    { 'locker:obtain("", 1)', "bad argument #1 to 'obtain' (key must not be empty)" },
    { 'locker:obtain(42, 1)', "bad argument #1 to 'obtain' (key must be a string, got number)" },
  }

  for _, c in ipairs(cases) do
    it(c[1], function()
      -- the call sits on line 2 of a chunk named "caller"
      local chunk = assert(load("local locker = ...\nlocker = locker; " .. c[1], "=caller"))
      local ok, err = pcall(chunk, locker)
      assert.is_false(ok)
      assert.are.equal("caller:2: " .. c[2], err)
    end)
  end
end)
