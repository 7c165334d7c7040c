/*
 * The scripts of the modes (limit, shared, fair): included into keys.c's
 * fl_scripts[] table, after the plain lock's four.  docs/modes.md has the
 * data model.  A key held in a mode:
 *   <key>        the marker value below, PX = the latest holder's deadline:
 *                a plain SET NX (fluxalock's, redis-py's, ...) fails on it,
 *                and a value that is not the marker keeps every mode out
 *   ...m:<key>h  holders: a ZSET, token -> its deadline (server ms)
 *   ...m:<key>q  waiters: a ZSET, kind .. token -> arrival number
 *   ...m:<key>m  a hash: mode (l, s, x) of the holders, limit, seq, and
 *                w<token> -> the waiter's heartbeat deadline (server ms)
 * All of them are companions (keys.c) of the lock key: one hash slot.
 * Every deadline is the server's clock (TIME), never a client's.
 */
#define FL_MODE_MARK "fluxalock:modes"

/* now in server ms; the latest holder's deadline after purging the dead
   holders; the live waiters (purging the dead ones) */
#define FL_MODE_COMMON \
  "local t = redis.call('time')\n" \
  "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
  "local function latest(H)\n" \
  "  local top = redis.call('zrange', H, -1, -1, 'withscores')\n" \
  "  return top[2] and tonumber(top[2]) or 0\n" \
  "end\n" \
  "local function keep(K, H, Q, M, extra)\n" \
  "  local life = math.max(latest(H) - now, extra, 1) + 1000\n" \
  "  redis.call('pexpire', H, life)\n" \
  "  redis.call('pexpire', Q, life)\n" \
  "  redis.call('pexpire', M, life)\n" \
  "end\n" \
  "local function mark(K, H)\n" \
  "  local top = latest(H)\n" \
  "  if top > now then\n" \
  "    redis.call('set', K, '" FL_MODE_MARK "', 'PX', top - now)\n" \
  "  else redis.call('del', K) end\n" \
  "end\n"

#define FL_MODE_SCRIPTS \
  { "mobtain", \
    /* KEYS: lock, fence, wake, holders, queue, meta. ARGV: token, ms, \
       kind (l, s, x; p: a plain obtain queued), limit, action (0 try, 1 try and queue, 2 leave the \
       queue), heartbeat ms.  -> fence | 0 | error LIMIT */ \
    FL_MODE_COMMON \
    "local K, H, Q, M = KEYS[1], KEYS[4], KEYS[5], KEYS[6]\n" \
    "local tok, kind, act = ARGV[1], ARGV[3], ARGV[5]\n" \
    "local me, hb = kind .. tok, tonumber(ARGV[6])\n" \
    "if act == '2' then\n" \
    "  redis.call('zrem', Q, me)\n" \
    "  redis.call('hdel', M, 'w' .. tok)\n" \
    "  return 0\n" \
    "end\n" \
    "redis.call('zremrangebyscore', H, '-inf', now)\n" \
    "local nh = redis.call('zcard', H)\n" \
    "local mode = nh > 0 and redis.call('hget', M, 'mode') or false\n" \
    "local ahead, xahead, mine, lwait = 0, false, false, false\n" \
    "for _, w in ipairs(redis.call('zrange', Q, 0, -1)) do\n" \
    "  local wt, wk = string.sub(w, 2), string.sub(w, 1, 1)\n" \
    "  if w == me then mine = true\n" \
    "  elseif tonumber(redis.call('hget', M, 'w' .. wt) or 0) < now then\n" \
    "    redis.call('zrem', Q, w)\n" \
    "    redis.call('hdel', M, 'w' .. wt)\n" \
    "  else\n" \
    "    if wk == 'l' then lwait = true end\n" \
    "    if not mine then\n" \
    "      ahead = ahead + 1\n" \
    "      if wk ~= 's' then xahead = true end\n" \
    "    end\n" \
    "  end\n" \
    "end\n" \
    "if kind == 'l' and (mode == 'l' or lwait) then\n" \
    "  local lim = redis.call('hget', M, 'limit')\n" \
    "  if lim and lim ~= ARGV[4] then\n" \
    "    return redis.error_reply('LIMIT ' .. lim)\n" \
    "  end\n" \
    "end\n" \
    "local v = redis.call('get', K)\n" \
    "local ok = not v or v == '" FL_MODE_MARK "'\n" \
    "if ok and kind == 'l' then\n" \
    "  ok = (nh == 0 or mode == 'l') and nh + ahead < tonumber(ARGV[4])\n" \
    "elseif ok and kind == 's' then\n" \
    "  ok = (nh == 0 or mode == 's') and not xahead\n" \
    "elseif ok then ok = nh == 0 and ahead == 0 end\n" \
    /* p: a plain obtain that queued behind a mode's holders; it gets the \
       plain lock, the holder's token as the value */ \
    "if ok and kind == 'p' then\n" \
    "  if mine then\n" \
    "    redis.call('zrem', Q, me)\n" \
    "    redis.call('hdel', M, 'w' .. tok)\n" \
    "  end\n" \
    "  redis.call('set', K, tok, 'PX', ARGV[2])\n" \
    "  keep(K, H, Q, M, hb)\n" \
    "  return redis.call('incr', KEYS[2])\n" \
    "end\n" \
    "if not ok then\n" \
    "  if act == '1' then\n" \
    "    if not mine then\n" \
    "      redis.call('zadd', Q, redis.call('hincrby', M, 'seq', 1), me)\n" \
    "    end\n" \
    "    redis.call('hset', M, 'w' .. tok, now + hb)\n" \
    "    if kind == 'l' then redis.call('hset', M, 'limit', ARGV[4]) end\n" \
    "    keep(K, H, Q, M, hb)\n" \
    "  elseif mine then\n" \
    "    redis.call('zrem', Q, me)\n" \
    "    redis.call('hdel', M, 'w' .. tok)\n" \
    "  end\n" \
    "  return 0\n" \
    "end\n" \
    "if mine then\n" \
    "  redis.call('zrem', Q, me)\n" \
    "  redis.call('hdel', M, 'w' .. tok)\n" \
    "end\n" \
    "redis.call('zadd', H, now + tonumber(ARGV[2]), tok)\n" \
    "redis.call('hset', M, 'mode', kind)\n" \
    "if kind == 'l' then redis.call('hset', M, 'limit', ARGV[4]) end\n" \
    "mark(K, H)\n" \
    "keep(K, H, Q, M, hb)\n" \
    "return redis.call('incr', KEYS[2])\n", "" }, \
  { "mrelease", \
    /* KEYS: lock, wake, holders, queue, meta. ARGV: token, wake-up \
       lifetime in ms, the releasing process's wake-up id.  One wake-up \
       per live waiter (up to 16): each may be the one the queue lets in */ \
    FL_MODE_COMMON \
    "local K, H, Q, M = KEYS[1], KEYS[3], KEYS[4], KEYS[5]\n" \
    "local s = redis.call('zscore', H, ARGV[1])\n" \
    "if not s then return 0 end\n" \
    "redis.call('zrem', H, ARGV[1])\n" \
    "redis.call('zremrangebyscore', H, '-inf', now)\n" \
    "if redis.call('get', K) == '" FL_MODE_MARK "' then mark(K, H) end\n" \
    "local n = math.min(math.max(redis.call('zcard', Q), 1), 16)\n" \
    "redis.call('del', KEYS[2])\n" \
    "for _ = 1, n do redis.call('lpush', KEYS[2], '1') end\n" \
    "redis.call('pexpire', KEYS[2], ARGV[2])\n" \
    "redis.pcall('publish', KEYS[2], ARGV[3] or '1')\n" \
    "if tonumber(s) <= now then return 0 end\n" \
    "return 1\n", "" }, \
  { "mttl", \
    /* KEYS: lock, holders. ARGV: token. -> ms left, or -1 */ \
    FL_MODE_COMMON \
    "local s = redis.call('zscore', KEYS[2], ARGV[1])\n" \
    "if not s or tonumber(s) <= now then return -1 end\n" \
    "return tonumber(s) - now\n", "" }, \
  { "mrefresh", \
    /* KEYS: lock, holders. ARGV: token, ms, "1" to replace. -> 1 or 0 */ \
    FL_MODE_COMMON \
    "local K, H = KEYS[1], KEYS[2]\n" \
    "local s = redis.call('zscore', H, ARGV[1])\n" \
    "if not s or tonumber(s) <= now then return 0 end\n" \
    "local d = tonumber(s) + tonumber(ARGV[2])\n" \
    "if ARGV[3] == '1' then d = now + tonumber(ARGV[2]) end\n" \
    "redis.call('zadd', H, d, ARGV[1])\n" \
    "local v = redis.call('get', K)\n" \
    "if v == '" FL_MODE_MARK "' or not v then mark(K, H) end\n" \
    "redis.call('pexpire', H, math.max(latest(H) - now, 1) + 1000)\n" \
    "return 1\n", "" }, \
  { "inspect", \
    /* KEYS: lock, holders, queue, meta. -> {mode, holders, limit or -1, \
       waiting, ms left} */ \
    FL_MODE_COMMON \
    "local K, H, Q, M = KEYS[1], KEYS[2], KEYS[3], KEYS[4]\n" \
    "local waiting = 0\n" \
    "for _, w in ipairs(redis.call('zrange', Q, 0, -1)) do\n" \
    "  local d = tonumber(redis.call('hget', M, 'w' .. string.sub(w, 2)) or 0)\n" \
    "  if d >= now then waiting = waiting + 1 end\n" \
    "end\n" \
    "local v = redis.call('get', K)\n" \
    "if not v then return {'free', 0, -1, waiting, 0} end\n" \
    "if v ~= '" FL_MODE_MARK "' then\n" \
    "  local left = math.max(redis.call('pttl', K), 0)\n" \
    /* a token of fluxalock's: 32 hex digits and their mark (token.c) */ \
    "  local own = #v == 40 and not string.find(v, '[^0-9a-f]') and\n" \
    "    string.sub(redis.sha1hex('fluxalock:' .. string.sub(v, 1, 32)), 1, 8) == string.sub(v, 33)\n" \
    "  return {own and 'exclusive' or 'foreign', 1, -1, waiting, left}\n" \
    "end\n" \
    "local n = redis.call('zcount', H, '(' .. now, '+inf')\n" \
    "local m = redis.call('hget', M, 'mode')\n" \
    "local names = {l = 'limit', s = 'shared', x = 'exclusive'}\n" \
    "local lim = -1\n" \
    "if m == 'l' then lim = tonumber(redis.call('hget', M, 'limit')) end\n" \
    "if n == 0 then return {'free', 0, -1, waiting, 0} end\n" \
    "return {names[m] or 'exclusive', n, lim, waiting, math.max(latest(H) - now, 0)}\n", "" }
