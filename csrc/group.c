/*
 * The group object of multi.c: a pool whose locks live on other servers
 * (its nodes), as the Lua layer builds it (pool:group, pool:setslots) and
 * reads it (pool:info, pool:redirects); the requests are multi.c's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fluxalock.h"
#include "net.h"

/* ---- the group object ------------------------------------------------------ */

void fl_multi_free(fl_pool *p) {
  int i;
  for (i = 0; i < p->nnodes; i++) fl_pool_unref(p->nodes[i]);
  free(p->nodes);
  free(p->slots);
  p->nodes = NULL;
  p->slots = NULL;
  p->nnodes = 0;
}

void fl_multi_close(fl_pool *p) {
  int j;
  for (j = 0; j < p->nnodes; j++) fl_pool_close_idle(p->nodes[j]);
}

static int add_node(fl_pool *g, fl_pool *n) {
  if (g->nnodes == g->nodecap) {
    int cap = g->nodecap ? 2 * g->nodecap : 4;
    fl_pool **a = realloc(g->nodes, (size_t)cap * sizeof *a);
    if (!a) return -1;
    g->nodes = a;
    g->nodecap = cap;
  }
  g->nodes[g->nnodes++] = n;
  return g->nnodes - 1;
}

static char *dup(const char *s) {
  char *r;
  if (!s) return NULL;
  if ((r = malloc(strlen(s) + 1))) memcpy(r, s, strlen(s) + 1);
  return r;
}

/* the cluster node at host:port, made from the group's options if new;
   -1 when out of memory */
int fl_group_node(fl_pool *g, const char *host, int port) {
  fl_pool *n;
  int i;
  for (i = 0; i < g->nnodes; i++)
    if (g->nodes[i]->o.port == port && strcmp(g->nodes[i]->o.host, host) == 0) return i;
  if (!(n = calloc(1, sizeof *n))) return -1;
  n->refs = 1;
  n->o = g->o; /* scalars; the strings are copied below */
  n->o.path = NULL;
  n->o.host = dup(host);
  n->o.username = dup(g->o.username);
  n->o.password = dup(g->o.password);
  n->o.prefix = dup(g->o.prefix);
  n->o.port = port;
  n->o.cluster = 1;
  n->o.tls = fl_tls_ref(g->o.tls); /* nodes speak TLS when the seeds do */
  n->maxconn = g->maxconn;
  n->has_park = g->has_park;
  snprintf(n->o.where, sizeof n->o.where, strchr(host, ':') ? "[%s]:%d" : "%s:%d",
           host, port);
  if (!n->o.host || !n->o.prefix || (g->o.username && !n->o.username) ||
      (g->o.password && !n->o.password) || (i = add_node(g, n)) < 0) {
    fl_pool_unref(n);
    return -1;
  }
  return i;
}

/* pool:group("redlock", {pool, ...}, where) or pool:group("cluster",
   {"host:port", ...}, where): turn a fresh pool into a group */
int fl_multi_group(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  const char *where = luaL_checkstring(L, 4);
  int i, n;
  luaL_checktype(L, 3, LUA_TTABLE);
  n = (int)luaL_len(L, 3);
  luaL_argcheck(L, g->kind == FL_SINGLE && g->nlinks == 0, 1, "pool already in use");
  luaL_argcheck(L, n >= 1, 3, "at least one node");
  snprintf(g->o.where, sizeof g->o.where, "%s", where);
  if (strcmp(kind, "redlock") == 0) {
    luaL_argcheck(L, n <= FL_MAXNODES, 3, "at most 16 Redlock nodes");
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, 3, i);
      if (add_node(g, fl_pool_ref(fl_checkpool(L, -1))) < 0) {
        fl_pool_unref(fl_checkpool(L, -1));
        return luaL_error(L, "fluxalock: out of memory");
      }
      lua_pop(L, 1);
    }
    g->kind = FL_REDLOCK;
  } else if (strcmp(kind, "sentinel") == 0) {
    luaL_argcheck(L, n == 1, 3, "one node");
    lua_rawgeti(L, 3, 1);
    if (add_node(g, fl_pool_ref(fl_checkpool(L, -1))) < 0) {
      fl_pool_unref(fl_checkpool(L, -1));
      return luaL_error(L, "fluxalock: out of memory");
    }
    lua_pop(L, 1);
    g->kind = FL_SENTINEL;
  } else if (strcmp(kind, "cluster") == 0) {
    if (!(g->slots = calloc(16384, sizeof *g->slots)))
      return luaL_error(L, "fluxalock: out of memory");
    g->o.cluster = 1;
    g->kind = FL_CLUSTER;
    for (i = 1; i <= n; i++) {
      char host[256];
      int port;
      lua_rawgeti(L, 3, i);
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      snprintf(host, sizeof host, "%s", luaL_checkstring(L, -2));
      port = (int)luaL_checkinteger(L, -1);
      if (fl_group_node(g, host, port) < 0) return luaL_error(L, "fluxalock: out of memory");
      lua_pop(L, 3);
    }
  } else {
    return luaL_argerror(L, 2, "'redlock', 'cluster' or 'sentinel' expected");
  }
  return 0;
}

/* pool:setslots(reply of CLUSTER SLOTS) -> number of slots mapped */
int fl_multi_setslots(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  int i, n, mapped = 0;
  luaL_argcheck(L, g->kind == FL_CLUSTER, 1, "not a cluster pool");
  luaL_checktype(L, 2, LUA_TTABLE);
  n = (int)luaL_len(L, 2);
  for (i = 1; i <= n; i++) {
    lua_Integer from, to, s;
    int port, idx;
    char host[256];
    lua_rawgeti(L, 2, i);
    if (!lua_istable(L, -1)) return luaL_argerror(L, 2, "CLUSTER SLOTS entries expected");
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 3);
    from = lua_tointeger(L, -3);
    to = lua_tointeger(L, -2);
    if (!lua_istable(L, -1) || from < 0 || to > 16383 || from > to)
      return luaL_argerror(L, 2, "CLUSTER SLOTS entries expected");
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    snprintf(host, sizeof host, "%s", lua_tostring(L, -2) ? lua_tostring(L, -2) : "");
    port = (int)lua_tointeger(L, -1);
    if (!host[0]) snprintf(host, sizeof host, "127.0.0.1");
    if (port < 1 || port > 65535) return luaL_argerror(L, 2, "bad port in CLUSTER SLOTS");
    if ((idx = fl_group_node(g, host, port)) < 0) return luaL_error(L, "fluxalock: out of memory");
    for (s = from; s <= to; s++) g->slots[s] = (unsigned short)(idx + 1);
    mapped += (int)(to - from + 1);
    lua_pop(L, 6);
  }
  lua_pushinteger(L, mapped);
  return 1;
}

/* pool:info() -> { kind=, nodes = {"host:port", ...}, moved=, asked= } */
int fl_multi_info(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  int i;
  static const char *kinds[] = {"single", "redlock", "cluster", "sentinel"};
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kinds[g->kind]);
  lua_setfield(L, -2, "kind");
  lua_createtable(L, g->nnodes, 0);
  for (i = 0; i < g->nnodes; i++) {
    lua_pushstring(L, g->nodes[i]->o.where);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "nodes");
  lua_pushinteger(L, (lua_Integer)g->moved);
  lua_setfield(L, -2, "moved");
  lua_pushinteger(L, (lua_Integer)g->asked);
  lua_setfield(L, -2, "asked");
  return 1;
}

/* pool:setrecover(fn): fn() -> true when the pool points at a (new)
   master; called when a lock's request failed (Sentinel) */
int fl_multi_setrecover(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  luaL_argcheck(L, g->kind == FL_SENTINEL, 1, "not a sentinel pool");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

/* pool:redirects() -> moved, asked (cheap: for the cluster layer's checks) */
int fl_multi_redirects(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  lua_pushinteger(L, (lua_Integer)g->moved);
  lua_pushinteger(L, (lua_Integer)g->asked);
  return 2;
}

/* the cluster node that serves the slot of the full key lkey */
fl_pool *fl_group_slot_node(fl_pool *g, const char *lkey, size_t len) {
  unsigned short i = g->slots[fl_slot(lkey, len)];
  return g->nodes[i ? i - 1 : 0];
}
