/*
 * Figures and a debug log.
 *
 * Every lock operation ends in fl_done(), once, with its results on top of
 * the stack (the end of every request, drive.c's fan_done, after its
 * kind's verdict).  It counts what only C sees (release results,
 * locks found lost, refreshes, their runtime failures) with plain
 * increments in fl_pool.n, and, when the pool has a log function (one
 * branch: fl_pool.has_log), calls it with one event table.  The obtain side
 * (obtained, not obtained, waits) is counted by the Lua Locker, which sees
 * each obtain's final answer; reconnects are counted by conn.c.
 *
 * The log function is called after the reply was freed, under lua_pcall,
 * and the event is built inside that pcall: a raise there (a memory error,
 * or the function itself) cannot break the request or leak anything.  Its
 * error is dropped here; the Lua layer's wrapper (lua/fluxalock.lua) has
 * already reported a raising user function once on stderr.  The event holds
 * the user's key (without prefix), never a token or a password: error
 * messages never contain either (conn.c builds them from the address).
 */
#include <string.h>

#include "fluxalock.h"

typedef struct fl_event {
  const char *op, *key, *outcome, *error, *where, *code;
  size_t keylen;
  double seconds;
  int ok, call;
} fl_event;

static const char *const opnames[] = {"obtain", "wait",    "release", "release",
                                      "ttl",    "refresh", "call"};

/* the outcome of a request that did not fail, from its first result */
static const char *outcome(lua_State *L, int op, int first, const fl_lock *lk) {
  int yes = lua_toboolean(L, first);
  switch (op) {
  case FL_OP_OBTAIN: return yes ? "obtained" : "not obtained";
  case FL_OP_AWAIT: return yes ? "woken" : "timed out";
  case FL_OP_RELEASE:
  case FL_OP_CLOSE: return yes ? "released" : "lost";
  case FL_OP_TTL: return lk && lk->held ? "held" : "lost";
  case FL_OP_REFRESH: return yes ? "refreshed" : "lost";
  default: return "reply";
  }
}

/* count a lock operation's result; lk->held is its state after the call
   (a lock is counted lost once: the call that finds it gone clears held) */
static void count(fl_pool *p, const fl_lock *lk, int op, int yes, int failed) {
  if (op == FL_OP_OBTAIN || op == FL_OP_AWAIT || op == FL_OP_CALL) return;
  if (failed)
    p->n.errors++;
  else if ((op == FL_OP_RELEASE || op == FL_OP_CLOSE) && yes)
    p->n.released++;
  else if (op == FL_OP_REFRESH && yes)
    p->n.refreshed++;
  else if ((op != FL_OP_TTL || (lk && !lk->held)) && /* false, or ttl found it gone */
           !(lk && fl_renew_found_lost(lk))) /* the renewal counted it already */
    p->n.lost++;
}

/* inside lua_pcall: 1 log function, 2 the event (light userdata) */
static int emit(lua_State *L) {
  const fl_event *e = lua_touserdata(L, 2);
  lua_createtable(L, 0, 9);
  lua_pushstring(L, e->op);
  lua_setfield(L, 3, "op");
  if (e->key) {
    lua_pushlstring(L, e->key, e->keylen);
    lua_setfield(L, 3, e->call ? "command" : "key");
  }
  lua_pushnumber(L, e->seconds);
  lua_setfield(L, 3, "seconds");
  lua_pushboolean(L, e->ok);
  lua_setfield(L, 3, "ok");
  lua_pushstring(L, e->where);
  lua_setfield(L, 3, "where");
  if (e->outcome) {
    lua_pushstring(L, e->outcome);
    lua_setfield(L, 3, "outcome");
  }
  if (e->error) {
    lua_pushstring(L, e->error);
    lua_setfield(L, 3, "error");
  }
  if (e->code) { /* a failure's, or "not_obtained" (as obtain returns) */
    lua_pushstring(L, e->code);
    lua_setfield(L, 3, "code");
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  lua_call(L, 1, 0);
  return 0;
}

/* pud: the stack index of the Pool userdata, or 0 when the Lock userdata
   at index 1 holds it (its uservalue 1) */
static void log_event(lua_State *L, fl_pool *p, fl_event *e, int pud) {
  if (!lua_checkstack(L, 6)) return; /* no room: the event is dropped */
  lua_pushcfunction(L, emit);
  if (pud) {
    lua_getiuservalue(L, pud, 3);
  } else {
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, -1, 3);
    lua_remove(L, -2);
  }
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    lua_pop(L, 2);
    return;
  }
  e->where = p->o.where;
  lua_pushlightuserdata(L, e);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1); /* see the top */
}

/*
 * An operation of pool p ended with nres results on top of the stack (left
 * as they are).  lk: the lock of a release/ttl/refresh, else NULL; key: the
 * user's key (a call: its command word); t0: when it began.
 */
int fl_done(lua_State *L, fl_pool *p, fl_lock *lk, int op, const char *key,
            size_t keylen, double t0, int nres, int pud) {
  int first = lua_gettop(L) - nres + 1;
  int failed = nres >= 2 && lua_isnil(L, first);
  count(p, lk, op, lua_toboolean(L, first), failed);
  if (p->has_log) {
    fl_event e;
    e.op = opnames[op];
    e.key = key;
    e.keylen = keylen;
    e.call = op == FL_OP_CALL;
    e.seconds = fl_now() - t0;
    e.ok = !failed;
    e.outcome = failed ? NULL : outcome(L, op, first, lk);
    e.error = failed && lua_type(L, first + 1) == LUA_TSTRING ? lua_tostring(L, first + 1) : NULL;
    e.code = failed && nres >= 3 && lua_type(L, first + 2) == LUA_TSTRING ? lua_tostring(L, first + 2)
             : op == FL_OP_OBTAIN && !failed && !lua_toboolean(L, first) ? fl_code_name(FL_E_NOT_OBTAINED)
             : NULL;
    log_event(L, p, &e, pud);
  }
  return nres;
}

/* pool:setlog(fn | nil): fn(event) after each request of this pool */
static int pool_setlog(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  p->has_log = !lua_isnil(L, 2);
  lua_setiuservalue(L, 1, 3);
  return 0;
}

static void add(fl_counts *to, const fl_counts *n) {
  to->released += n->released;
  to->lost += n->lost;
  to->refreshed += n->refreshed;
  to->errors += n->errors;
  to->reconnects += n->reconnects;
}

static void setint(lua_State *L, const char *k, long long v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* pool:counts() -> a fresh table: this pool's counters and its nodes' */
/* requests of p taken and not yet given back */
static long long in_flight(const fl_pool *p) {
  const fl_req *c;
  long long n = 0;
  for (c = p->allreqs; c; c = c->nextall) n += c->busy != 0;
  return n;
}

static int pool_counts(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  long long flying = in_flight(p);
  fl_counts n = p->n;
  long long renewed = 0;
  int i;
  for (i = 0; i < p->group.nnodes; i++) {
    add(&n, &p->group.nodes[i]->n);
    flying += in_flight(p->group.nodes[i]);
  }
  { /* renewal (renew.c): refreshes the thread confirmed, and locks it
       found lost (a later call on such a lock is not counted again: count) */
    long long r = 0, l = 0;
    fl_renew_counts(p, &r, &l);
    renewed += r;
    n.lost += l;
  }
  lua_createtable(L, 0, 9);
  setint(L, "released", n.released);
  setint(L, "lost", n.lost);
  setint(L, "refreshed", n.refreshed);
  setint(L, "errors", n.errors);
  setint(L, "reconnects", n.reconnects);
  setint(L, "redirects", (long long)p->group.moved + (long long)p->group.asked);
  setint(L, "renewed", renewed);
  setint(L, "in_flight", flying);
  return 1;
}

/* adds setlog and counts to the Pool methods (after fl_pool_open) */
void fl_stats_open(lua_State *L) {
  static const luaL_Reg meth[] = {{"setlog", pool_setlog}, {"counts", pool_counts},
                                  {NULL, NULL}};
  luaL_getmetatable(L, FL_POOL_MT);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, meth, 0);
  lua_pop(L, 2);
}

/* tell the Lua layer that the key of the lock at lockidx was released:
   notify(full key, the Pool userdata that made it [, the lock it was
   handed over to: at index 2, llock.c]); never raises or yields */
void fl_notify(lua_State *L, int lockidx) {
  const fl_lock *lk = luaL_testudata(L, lockidx, FL_LOCK_MT);
  const fl_lock *hand = luaL_testudata(L, 2, FL_LOCK_MT);
  if (!lk || lua_getfield(L, LUA_REGISTRYINDEX, FL_NOTIFY) != LUA_TFUNCTION) {
    if (lk) lua_pop(L, 1);
    return;
  }
  lua_pushlstring(L, lk->key, lk->keylen);
  lua_getiuservalue(L, lockidx, 1);
  if (hand && hand->held) lua_pushvalue(L, 2);
  else lua_pushnil(L);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) lua_pop(L, 1);
}
