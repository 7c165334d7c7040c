/*
 * The fluxalock.Lock userdata.
 *
 * Like a file handle in Lua's liolib.c, a lock is marked released *before*
 * the compare-and-delete is sent, so releasing twice, or re-entering from a
 * finalizer, is harmless; __close shares the release path and never raises;
 * __gc never raises, never yields, and is bounded by the pool's timeouts.
 *
 * The lock holds a C reference on its pool (so lua_close and any collection
 * order are safe) and, as uservalue 1, the Pool userdata (which carries the
 * host's wait function for event-loop hosts).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stddef.h>
#include <stdlib.h>

#include "fan.h"

#define MAX_SECONDS 1e9 /* ~31 years: far inside what PX and PEXPIRE accept;
                          the messages below say "1e9", as the Lua layer does */

fl_lock *fl_lock_new(lua_State *L, int poolidx, fl_pool *p, const char *key,
                     size_t keylen) {
  size_t plen = p->o.prefixlen;
  fl_lock *lk = lua_newuserdatauv(L, offsetof(fl_lock, key) + plen + keylen + 1, 1);
  lk->pool = NULL;
  lk->held = 0;
  lk->renew = NULL;
  lk->mode = 0;
  lk->fence = 0;
  lk->prefixlen = plen;
  lk->keylen = plen + keylen;
  memcpy(lk->key, p->o.prefix, plen);
  memcpy(lk->key + plen, key, keylen);
  lk->key[plen + keylen] = '\0';
  luaL_setmetatable(L, FL_LOCK_MT);
  lua_pushvalue(L, poolidx);
  lua_setiuservalue(L, -2, 1);
  lk->pool = fl_pool_ref(p);
  return lk;
}

/* the lock argument of a method; in a plain script the on_lost functions
   due run first (lost.c) */
static fl_lock *checklock(lua_State *L) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  fl_lost_tell(L);
  return lk;
}

/* ---- release / __close ----------------------------------------------------- */


/* core.setnotify(fn | nil): fn(full key) after every release of this
   process, so the Lua layer hands the key to its next local waiter */
static int lock_setnotify(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FL_NOTIFY);
  return 0;
}

/* core.sethandover(fn | nil): fn(full key, Pool userdata) -> ms | nil
   before a plain lock's release under a host: ms when this process has a
   waiter for the key, which then gets the lock in the release's own
   script (keys.c "handover") */
static int lock_sethandover(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FL_HANDOVER);
  return 0;
}

/* the stack of a release of lk at 1: 2 the lock a hand-over makes for the
   next local waiter (a fresh token, not held yet), 3 its ms; or nothing */
static void hand_prepare(lua_State *L, fl_lock *lk) {
  lua_Integer ms;
  fl_lock *nl;
  lua_settop(L, 1);
  /* (a lock confirmed by replicas keeps the plain path: the hand-over
     sends no WAIT) */
  if (lk->mode || !lk->pool->has_host || !lk->pool->ops->fence || lk->pool->o.replicas > 0)
    return;
  if (lua_getfield(L, LUA_REGISTRYINDEX, FL_HANDOVER) != LUA_TFUNCTION) {
    lua_settop(L, 1);
    return;
  }
  lua_pushlstring(L, lk->key, lk->keylen);
  lua_getiuservalue(L, 1, 1);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
    lua_settop(L, 1);
    return;
  }
  ms = lua_tointeger(L, -1);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1); /* 2: the pool userdata, then the new lock */
  nl = fl_lock_new(L, 2, lk->pool, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen);
  lua_replace(L, 2);
  if (fl_token(nl->token) != 0) {
    lua_settop(L, 1); /* no hand-over: a plain release */
    return;
  }
  lua_pushinteger(L, ms);
}

/* core.handback(lock): a handed-over lock nobody took is released now,
   without waiting for the answer (never yields) */
static int lock_handback(lua_State *L) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  if (lk->held && lk->pool) fl_fan_drop(lk);
  return 0;
}

/* lock:release() -> true | false | nil, message */
static int lock_release(lua_State *L) {
  fl_lock *lk = checklock(L);
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  if (!lk->held) {
    lua_pushboolean(L, 0);
    return 1;
  }
  fl_renew_stop(lk); /* before the release is sent */
  hand_prepare(L, lk);
  return fl_drive_lock(L, FL_OP_RELEASE);
}

/* __close(lock, err): release, never raise; may yield under a host.  Where
   Lua cannot yield (coroutine.close, an error leaving a coroutine, the main
   thread) the host's wait would fail: queue the release like __gc does */
static int lock_close(lua_State *L) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  if (!lk->held) return 0;
  fl_renew_stop(lk); /* before the release is sent */
  if (lk->pool->has_host && !lua_isyieldable(L)) {
    fl_fan_defer(lk);
    return 0;
  }
  hand_prepare(L, lk);
  return fl_drive_lock(L, FL_OP_CLOSE); /* errors swallowed: the scope's own
                                         error must win */
}

/* __gc: release now when that cannot block a host's loop, else defer the
   release to the pool's next request */
static int lock_gc(lua_State *L) {
  fl_lock *lk = lua_touserdata(L, 1);
  fl_pool *p = lk->pool;
  if (!p) return 0;
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  fl_renew_drop(lk); /* stopped before the release is sent */
  if (lk->held) fl_fan_defer(lk); /* sent now when no host waits */
  lk->pool = NULL;
  fl_pool_unref(p);
  return 0;
}

/* ---- ttl / refresh ----------------------------------------------------------- */

/* lock:ttl() -> seconds left (0 when no longer held) | nil, message */
static int lock_ttl(lua_State *L) {
  fl_lock *lk = checklock(L);
  if (!lk->held) {
    lua_pushnumber(L, 0);
    return 1;
  }
  return fl_drive_lock(L, FL_OP_TTL);
}

/* a duration argument in seconds, as whole milliseconds (>= 1) */
lua_Integer fl_checkms(lua_State *L, int arg, const char *what) {
  lua_Number s;
  char msg[96];
  if (lua_type(L, arg) != LUA_TNUMBER) {
    snprintf(msg, sizeof msg, "%s must be a number of seconds, got %s", what,
             luaL_typename(L, arg));
    luaL_argerror(L, arg, msg);
  }
  s = lua_tonumber(L, arg);
  if (s != s) {
    snprintf(msg, sizeof msg, "%s must not be NaN", what);
    luaL_argerror(L, arg, msg);
  }
  if (s < 0.001) {
    snprintf(msg, sizeof msg, "%s must be at least 0.001 seconds", what);
    luaL_argerror(L, arg, msg);
  }
  if (s > MAX_SECONDS) {
    snprintf(msg, sizeof msg, "%s must not exceed 1e9 seconds", what);
    luaL_argerror(L, arg, msg);
  }
  return (lua_Integer)floor(s * 1000.0 + 0.5);
}

/* lock:refresh(ttl [, {replace = true}]) -> true | false | nil, message */
static int lock_refresh(lua_State *L) {
  fl_lock *lk = checklock(L);
  lua_Integer ms = fl_checkms(L, 2, "ttl");
  int replace = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_argexpected(L, lua_type(L, 3) == LUA_TTABLE, 3, "table or nil");
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "replace") != 0)
        luaL_argerror(L, 3, lua_pushfstring(L, "unknown option '%s'",
                                            luaL_tolstring(L, -1, NULL)));
    }
    lua_getfield(L, 3, "replace");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
      luaL_argerror(L, 3, "option 'replace' must be a boolean");
    replace = lua_toboolean(L, -1);
  }
  if (!lk->held) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_settop(L, 1); /* ms and replace travel on the stack */
  lua_pushinteger(L, ms);
  lua_pushboolean(L, replace);
  return fl_drive_lock(L, FL_OP_REFRESH);
}

/* ---- local accessors ----------------------------------------------------- */

static int lock_key(lua_State *L) {
  fl_lock *lk = checklock(L);
  lua_pushlstring(L, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen);
  return 1;
}

static int lock_token(lua_State *L) {
  lua_pushlstring(L, checklock(L)->token, FL_TOKEN_LEN);
  return 1;
}

/* held and, for a renewed lock, still vouched for by its renewal: not
   lost, not past its local deadline, renewed by this process */
static int is_held(const fl_lock *lk) { return lk->held && fl_renew_held(lk); }

static int lock_held(lua_State *L) {
  lua_pushboolean(L, is_held(checklock(L)));
  return 1;
}

static int lock_fence(lua_State *L) {
  fl_lock *lk = checklock(L);
  if (lk->pool && !lk->pool->ops->fence)
    return luaL_error(L, "fluxalock: fence is not available on a Redlock pool "
                         "(independent counters on each node give no order)");
  lua_pushinteger(L, (lua_Integer)lk->fence);
  return 1;
}

static int lock_tostring(lua_State *L) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  lua_pushstring(L, "fluxalock.Lock: ");
  lua_pushlstring(L, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen);
  lua_pushstring(L, is_held(lk) ? " (held)" : " (released)");
  lua_concat(L, 3);
  return 1;
}

int fl_lock_open(lua_State *L) {
  static const luaL_Reg meth[] = {
    {"release", lock_release}, {"ttl", lock_ttl},     {"refresh", lock_refresh},
    {"key", lock_key},         {"token", lock_token}, {"held", lock_held},
    {"fence", lock_fence},     {NULL, NULL}};
  static const luaL_Reg mt[] = {
    {"__close", lock_close}, {"__gc", lock_gc}, {"__tostring", lock_tostring},
    {NULL, NULL}};
  luaL_newmetatable(L, FL_LOCK_MT); /* sets __name = "fluxalock.Lock" */
  luaL_setfuncs(L, mt, 0);
  luaL_newlib(L, meth);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, lock_setnotify);
  lua_setfield(L, -2, "setnotify");
  lua_pushcfunction(L, lock_sethandover);
  lua_setfield(L, -2, "sethandover");
  lua_pushcfunction(L, lock_handback);
  lua_setfield(L, -2, "handback");
  return 0;
}
