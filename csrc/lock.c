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

#include "fluxalock.h"

#define MAX_SECONDS 1e9 /* ~31 years: far inside what PX and PEXPIRE accept;
                          the messages below say "1e9", as the Lua layer does */

fl_lock *fl_lock_new(lua_State *L, int poolidx, fl_pool *p, const char *key,
                     size_t keylen) {
  size_t plen = p->o.prefixlen;
  fl_lock *lk = lua_newuserdatauv(L, offsetof(fl_lock, key) + plen + keylen + 1, 1);
  lk->pool = NULL;
  lk->held = 0;
  lk->renew = NULL;
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

void fl_cmd_release(fl_cmd *cmd, const char *key, size_t keylen,
                    const char *wake, size_t wakelen, const char *token) {
  fl_cmd_script(cmd, FL_S_RELEASE, 2);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, wake, wakelen);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
  /* a wake-up nobody takes is gone after 1 s: at worst one waiter that
     arrives later tries once for nothing */
  fl_cmd_arg(cmd, "1000", 4);
  /* the message names this process: its own subscription skips it (the
     release already woke the local waiter) */
  fl_cmd_arg(cmd, fl_wake_id(), FL_WAKE_ID_LEN);
}

static fl_lock *checklock(lua_State *L) {
  return luaL_checkudata(L, 1, FL_LOCK_MT);
}

/* the host's wait function at index 'at' (0: poll), and a free connection */
static fl_conn *prepare(lua_State *L, fl_lock *lk, int at, int *hidx) {
  fl_conn *c;
  lua_settop(L, at - 1);
  *hidx = 0;
  if (lk->pool->has_host) {
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, -1, 1);
    lua_remove(L, -2);
    *hidx = at;
  }
  if (!(c = fl_pool_conn(lk->pool))) luaL_error(L, "fluxalock: out of memory");
  return c;
}

/* the integer answer of a script, or a pushed failure (returns < 0) */
static int script_result(lua_State *L, fl_conn *c, int st, long long *n) {
  redisReply *r;
  if (st == FL_ERR) return -fl_push_error(L, c);
  r = c->reply;
  if (r->type == REDIS_REPLY_ERROR) return -fl_push_reply_error(L, c);
  if (r->type != REDIS_REPLY_INTEGER) {
    fl_conn_end(c);
    fl_conn_disconnect(c);
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: %s %s: unexpected reply", c->op, c->pool->o.where);
    return -2;
  }
  *n = r->integer;
  fl_conn_end(c);
  return 0;
}

/* ---- release / __close ----------------------------------------------------- */

#define NOTIFY "fluxalock.notify"

/* core.setnotify(fn | nil): fn(full key) after every release of this
   process, so the Lua layer hands the key to its next local waiter */
static int lock_setnotify(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, NOTIFY);
  return 0;
}

/* tell the Lua layer that the key of the lock at lockidx was released:
   notify(full key, the Pool userdata that made it); never raises or yields */
void fl_notify(lua_State *L, int lockidx) {
  const fl_lock *lk = luaL_testudata(L, lockidx, FL_LOCK_MT);
  if (!lk || lua_getfield(L, LUA_REGISTRYINDEX, NOTIFY) != LUA_TFUNCTION) {
    if (lk) lua_pop(L, 1);
    return;
  }
  lua_pushlstring(L, lk->key, lk->keylen);
  lua_getiuservalue(L, lockidx, 1);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
}

static int release_start(lua_State *L, fl_lock *lk, lua_KFunction k, int *st,
                         fl_conn **cp) {
  int hidx;
  size_t wakelen;
  const char *wake;
  fl_conn *c = prepare(L, lk, 2, &hidx);
  *cp = c;
  wake = fl_companion(c, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen,
                      "wake:", 1, &wakelen);
  if (!wake) luaL_error(L, "fluxalock: out of memory");
  lk->held = 0; /* first: a re-entrant release finds it released */
  fl_cmd_release(&c->cmd, lk->key, lk->keylen, wake, wakelen, lk->token);
  if ((*st = fl_conn_begin(c, "release", 0)) == FL_ERR) return 0;
  *st = fl_run(L, c, hidx, k, (lua_KContext)c);
  return 0;
}

static int release_result(lua_State *L, fl_conn *c, int st) {
  fl_lock *lk = lua_touserdata(L, 1);
  long long n = 0;
  int r = script_result(L, c, st, &n);
  if (r < 0) {
    lk->held = 1; /* not known to be released: the caller may try again */
    return -r;
  }
  lua_pushboolean(L, n == 1);
  return 1;
}

/* an operation of the lock at 1 ends: counted and logged (stats.c) */
static int done(lua_State *L, fl_conn *c, int op, int nres) {
  fl_lock *lk = lua_touserdata(L, 1);
  return fl_done(L, c->pool, lk, op, lk->key + lk->prefixlen,
                 lk->keylen - lk->prefixlen, c->t0, nres, 0);
}

static int release_finish(lua_State *L, fl_conn *c, int st) {
  int n = done(L, c, FL_OP_RELEASE, release_result(L, c, st));
  fl_notify(L, 1);
  return n;
}

static int release_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 2, release_k, ctx);
  return release_finish(L, c, st);
}

/* lock:release() -> true | false | nil, message */
static int lock_release(lua_State *L) {
  fl_lock *lk = checklock(L);
  fl_conn *c;
  int st;
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  if (!lk->held) {
    lua_pushboolean(L, 0);
    return 1;
  }
  fl_renew_stop(lk); /* before the release is sent */
  if (lk->pool->kind) return fl_multi_lock(L, FL_OP_RELEASE);
  release_start(L, lk, release_k, &st, &c);
  return release_finish(L, c, st);
}

static int close_k(lua_State *L, int status, lua_KContext ctx) {
  release_k(L, status, ctx);
  return 0; /* errors swallowed: the scope's own error must win */
}

/* queue the release in front of the pool's next request */
static void defer_release(fl_lock *lk) {
  fl_pool *p = lk->pool;
  size_t wakelen;
  char *wake = fl_companion_dup(&p->o, lk->key + lk->prefixlen,
                                lk->keylen - lk->prefixlen, "wake:", &wakelen);
  lk->held = 0;
  if (wake) {
    fl_pool_defer(p, lk->key, lk->keylen, wake, wakelen, lk->token);
    free(wake);
  }
}

/* __close(lock, err): release, never raise; may yield under a host.  Where
   Lua cannot yield (coroutine.close, an error leaving a coroutine, the main
   thread) the host's wait would fail: queue the release like __gc does */
static int lock_close(lua_State *L) {
  fl_lock *lk = checklock(L);
  fl_conn *c;
  int st;
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  if (!lk->held) return 0;
  fl_renew_stop(lk); /* before the release is sent */
  if (lk->pool->has_host && !lua_isyieldable(L)) {
    if (lk->pool->kind) fl_multi_gc(lk); /* a group: on its nodes */
    else defer_release(lk);
    return 0;
  }
  if (lk->pool->kind) return fl_multi_lock(L, FL_OP_CLOSE);
  release_start(L, lk, close_k, &st, &c);
  release_finish(L, c, st);
  return 0;
}

/* __gc: release now when that cannot block a host's loop, else defer the
   release to the pool's next request */
static int lock_gc(lua_State *L) {
  fl_lock *lk = lua_touserdata(L, 1);
  fl_pool *p = lk->pool;
  if (!p) return 0;
  if (fl_renew_foreign(lk)) lk->held = 0; /* the parent's (fork): not ours */
  fl_renew_drop(lk); /* stopped before the release is sent */
  if (lk->held && p->kind) fl_multi_gc(lk); /* clears held */
  if (lk->held) {
    defer_release(lk);
    if (!p->has_host) fl_pool_flush(p);
  }
  lk->pool = NULL;
  fl_pool_unref(p);
  return 0;
}

/* ---- ttl / refresh ----------------------------------------------------------- */

static int ttl_result(lua_State *L, fl_conn *c, int st) {
  fl_lock *lk = lua_touserdata(L, 1);
  long long n = 0;
  int r = script_result(L, c, st, &n);
  if (r < 0) return -r;
  if (n < 0) { /* expired or taken over: lost for good */
    lk->held = 0;
    n = 0;
  }
  lua_pushnumber(L, (lua_Number)n / 1000.0);
  return 1;
}

static int ttl_finish(lua_State *L, fl_conn *c, int st) {
  return done(L, c, FL_OP_TTL, ttl_result(L, c, st));
}

static int ttl_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 2, ttl_k, ctx);
  return ttl_finish(L, c, st);
}

/* lock:ttl() -> seconds left (0 when no longer held) | nil, message */
static int lock_ttl(lua_State *L) {
  fl_lock *lk = checklock(L);
  int hidx;
  fl_conn *c;
  if (!lk->held) {
    lua_pushnumber(L, 0);
    return 1;
  }
  if (lk->pool->kind) return fl_multi_lock(L, FL_OP_TTL);
  c = prepare(L, lk, 2, &hidx);
  fl_cmd_script(&c->cmd, FL_S_TTL, 1);
  fl_cmd_arg(&c->cmd, lk->key, lk->keylen);
  fl_cmd_arg(&c->cmd, lk->token, FL_TOKEN_LEN);
  if (fl_conn_begin(c, "ttl", 0) == FL_ERR) return ttl_finish(L, c, FL_ERR);
  return ttl_finish(L, c, fl_run(L, c, hidx, ttl_k, (lua_KContext)c));
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

static int refresh_result(lua_State *L, fl_conn *c, int st) {
  fl_lock *lk = lua_touserdata(L, 1);
  long long n = 0;
  long long acked = c->acked;
  int want = c->pool->o.replicas;
  int r = script_result(L, c, st, &n);
  if (r < 0) return -r;
  if (n != 1) lk->held = 0;
  if (n == 1 && want > 0 && acked < want) { /* extended on the master only */
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: refresh %s: %d of %d replicas acknowledged the refresh",
                    lk->pool->o.where, (int)(acked < 0 ? 0 : acked), want);
    return 2;
  }
  lua_pushboolean(L, n == 1);
  return 1;
}

static int refresh_finish(lua_State *L, fl_conn *c, int st) {
  return done(L, c, FL_OP_REFRESH, refresh_result(L, c, st));
}

static int refresh_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 4, refresh_k, ctx);
  return refresh_finish(L, c, st);
}

/* lock:refresh(ttl [, {replace = true}]) -> true | false | nil, message */
static int lock_refresh(lua_State *L) {
  fl_lock *lk = checklock(L);
  lua_Integer ms = fl_checkms(L, 2, "ttl");
  int replace = 0, hidx;
  fl_conn *c;
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
  if (lk->pool->kind) { /* ms and replace travel on the stack */
    lua_settop(L, 1);
    lua_pushinteger(L, ms);
    lua_pushboolean(L, replace);
    return fl_multi_lock(L, FL_OP_REFRESH);
  }
  c = prepare(L, lk, 4, &hidx);
  snprintf(c->num[0], sizeof c->num[0], "%lld", (long long)ms);
  fl_cmd_script(&c->cmd, FL_S_REFRESH, 1);
  fl_cmd_arg(&c->cmd, lk->key, lk->keylen);
  fl_cmd_arg(&c->cmd, lk->token, FL_TOKEN_LEN);
  fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
  fl_cmd_arg(&c->cmd, replace ? "1" : "0", 1);
  if (fl_conn_begin(c, "refresh", 0) == FL_ERR) return refresh_finish(L, c, FL_ERR);
  return refresh_finish(L, c, fl_run(L, c, hidx, refresh_k, (lua_KContext)c));
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
  if (lk->pool && lk->pool->kind == FL_REDLOCK)
    return luaL_error(L, "fluxalock: fence is not available on a Redlock pool "
                         "(independent counters on each node give no order)");
  lua_pushinteger(L, (lua_Integer)lk->fence);
  return 1;
}

static int lock_tostring(lua_State *L) {
  fl_lock *lk = checklock(L);
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
  return 0;
}
