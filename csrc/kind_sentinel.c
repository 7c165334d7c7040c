/*
 * Sentinel: one node, the master that Sentinel named (the Lua layer finds
 * it and retargets the node).  A lock's release, ttl or refresh that fails
 * there calls the pool's recover function (pool:setrecover: it asks the
 * sentinels again) once, then tries again: a lock follows a failover by
 * itself.  Obtain and wait do not: the Lua layer looks itself.
 *
 * The group holds its sentinels (fl_sentinels).  The Lua layer's discovery
 * is a round of sentinel.c (group:discovery()) whose questions it sends
 * with pool:call(round), to a fresh pool of one sentinel
 * (group:sentinel(i)) or to the node: the round judges each reply there
 * (fan.h's judge), so the rules are sentinel.c's alone.
 */
#include <stdlib.h>
#include <string.h>

#include "fan.h"

typedef struct sdisc_ud {
  fl_sdisc d;  /* first: pool:call reads it (lpool.c) */
  fl_pool *g;  /* one reference: d.s is its sentinels */
} sdisc_ud;

/* the sentinels at 5: {master = name, password = pw | nil, host, port,
   host, port, ...}, with the options of the node (the pool's) */
static void read_sentinels(lua_State *L, fl_pool *g) {
  fl_sentinels *s;
  const char *master, *pw;
  int i, n;
  luaL_checktype(L, 5, LUA_TTABLE);
  n = (int)luaL_len(L, 5) / 2;
  luaL_argcheck(L, n >= 1 && n <= 64, 5, "1 to 64 host, port pairs");
  lua_getfield(L, 5, "master");
  lua_getfield(L, 5, "password");
  master = luaL_checkstring(L, -2);
  pw = luaL_optstring(L, -1, NULL);
  if (!(s = g->group.sentinels = calloc(1, sizeof *s)) || !(s->o = calloc((size_t)n, sizeof *s->o)) ||
      !(s->master = malloc(strlen(master) + 1)))
    luaL_error(L, "fluxalock: out of memory"); /* the group frees what was made */
  memcpy(s->master, master, strlen(master) + 1);
  for (i = 0; i < n; i++) {
    size_t len;
    const char *host;
    lua_Integer port;
    lua_rawgeti(L, 5, 2 * i + 1);
    lua_rawgeti(L, 5, 2 * i + 2);
    host = lua_tolstring(L, -2, &len);
    port = lua_tointeger(L, -1);
    luaL_argcheck(L, host && len > 0 && len < 200 && port >= 1 && port <= 65535, 5,
                  "host, port pairs expected");
    if (fl_sentinels_add(s, host, len, (int)port, pw, &g->group.nodes[0]->o) != 0)
      luaL_error(L, "fluxalock: out of memory");
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
}

static void sentinel_setup(lua_State *L, fl_pool *g, int n) {
  luaL_argcheck(L, n == 1, 3, "one node");
  lua_rawgeti(L, 3, 1);
  fl_group_add_pool(L, g, -1);
  lua_pop(L, 1);
  read_sentinels(L, g);
}

static fl_pool *checkgroup(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  luaL_argcheck(L, g->ops == &fl_kind_sentinel && g->group.sentinels, 1, "not a sentinel pool");
  return g;
}

static int sdisc_gc(lua_State *L) {
  sdisc_ud *u = luaL_checkudata(L, 1, FL_SDISC_MT);
  fl_pool_unref(u->g);
  u->g = NULL;
  return 0;
}

/* round:next() -> "sentinel", i (ask sentinel i) | "role", host, port (ask
   ROLE there) | true, host, port (the master) | nil, message, code */
static int sdisc_next(lua_State *L) {
  sdisc_ud *u = luaL_checkudata(L, 1, FL_SDISC_MT);
  fl_sdisc *d = &u->d;
  char msg[FL_ERRLEN + 256];
  switch (d->step) {
  case FL_SD_SENTINEL:
    lua_pushliteral(L, "sentinel");
    lua_pushinteger(L, d->cur + 1);
    return 2;
  case FL_SD_FAILED: {
    int code = fl_sdisc_failure(d, msg, sizeof msg);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, fl_code_name(code));
    return 3;
  }
  default:
    if (d->step == FL_SD_ROLE) lua_pushliteral(L, "role");
    else lua_pushboolean(L, 1);
    lua_pushstring(L, d->host);
    lua_pushinteger(L, d->port);
    return 3;
  }
}

/* group:discovery() -> a round, from the sentinel that answered last */
int fl_sentinel_discovery(lua_State *L) {
  fl_pool *g = checkgroup(L);
  sdisc_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->g = NULL;
  if (luaL_newmetatable(L, FL_SDISC_MT)) {
    lua_pushcfunction(L, sdisc_gc);
    lua_setfield(L, -2, "__gc");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sdisc_next);
    lua_setfield(L, -2, "next");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  u->g = fl_pool_ref(g);
  fl_sdisc_start(&u->d, g->group.sentinels);
  return 1;
}

/* group:sentinel(i) -> a fresh pool of sentinel i alone (closed after its
   question: a sentinel's connection is not kept) */
int fl_sentinel_pool(lua_State *L) {
  fl_pool *g = checkgroup(L), *p;
  lua_Integer i = luaL_checkinteger(L, 2);
  fl_pool_ud *u;
  luaL_argcheck(L, i >= 1 && i <= g->group.sentinels->n, 2, "no such sentinel");
  u = lua_newuserdatauv(L, sizeof *u, 3); /* as lpool.c's pool_new */
  u->p = NULL;
  luaL_setmetatable(L, FL_POOL_MT);
  if (!(p = calloc(1, sizeof *p)) || fl_opts_copy(&p->o, &g->group.sentinels->o[i - 1]) != 0) {
    free(p);
    return luaL_error(L, "fluxalock: out of memory");
  }
  p->refs = 1;
  p->ops = &fl_kind_single;
  p->maxconn = 1;
  u->p = p;
  return 1;
}

static int sentinel_nodes(fl_pool *g, const char *lkey, size_t len, fl_pool **out) {
  (void)lkey;
  (void)len;
  out[0] = g->group.nodes[0];
  return 1;
}

static fl_pool *sentinel_await_node(fl_pool *g, const char *lkey, size_t len) {
  (void)lkey;
  (void)len;
  return g->group.nodes[0];
}

/* a lock's request failed (master gone, or now a replica that refused the
   write): has the pool a recover function to call, once? */
static int sentinel_recover(lua_State *L, fl_fan *f) {
  int has;
  if (f->recovered || f->legs[0].st != LEG_ERR) return 0;
  if (f->op != FL_OP_RELEASE && f->op != FL_OP_CLOSE && f->op != FL_OP_TTL &&
      f->op != FL_OP_REFRESH)
    return 0;
  f->recovered = 1;
  has = lua_getiuservalue(L, f->poolidx, 2) == LUA_TFUNCTION;
  if (!has) lua_pop(L, 1);
  return has;
}

/* pool:setrecover(fn): fn() -> true when the pool points at a (new)
   master; called when a lock's request failed */
int fl_sentinel_setrecover(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  luaL_argcheck(L, g->ops == &fl_kind_sentinel, 1, "not a sentinel pool");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

const fl_kind fl_kind_sentinel = {
  "sentinel", 1, 0, sentinel_setup, sentinel_nodes, sentinel_await_node, NULL, NULL,
  NULL, fl_verdict_one, sentinel_recover,
};
