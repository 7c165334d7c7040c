-- A coroutine of the embed example that uses the rest of a lock's life
-- cycle (ttl, refresh, release) while the workers contend for its key.
-- luacheck: read globals embed
local copy = ...
local locker = require("fluxalock").locker()
local key = "embed:" .. copy % 4

local lock = assert(locker:obtain(key, 2, 2))
embed.enter(key)
local left = assert(lock:ttl())
assert(left > 0 and left <= 2, "ttl " .. left)
embed.sleep(0.005)
assert(lock:refresh(1) == true, "refresh")
embed.leave(key)
assert(lock:release() == true, "release")
