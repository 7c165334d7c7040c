/*
 * The group object: a pool whose locks live on other servers (its nodes),
 * as the Lua layer builds it (pool:group; the kind's own setup reads the
 * nodes) and reads it (pool:info, pool:redirects).  Its requests are
 * fan.c's, steered by the kind's table (fan.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fan.h"
#include "net.h"

/* ---- the group object ------------------------------------------------------ */

void fl_group_close(fl_pool *p) {
  int j;
  for (j = 0; j < p->group.nnodes; j++) fl_pool_close_idle(p->group.nodes[j]);
}

/* the Pool userdata at idx joins the group g; raises when out of memory */
void fl_group_add_pool(lua_State *L, fl_pool *g, int idx) {
  fl_pool *n = fl_checkpool(L, idx);
  if (fl_group_add(g, fl_pool_ref(n)) < 0) {
    fl_pool_unref(n);
    luaL_error(L, "fluxalock: out of memory");
  }
}

/* may g become a group: a single server that never connected */
int fl_group_fresh(const fl_pool *g) { return g->ops == &fl_kind_single && g->nlinks == 0; }

/* n joins the group (its reference with it): its index, or -1 */
int fl_group_add(fl_pool *g, fl_pool *n) {
  if (g->group.nnodes == g->group.nodecap) {
    int cap = g->group.nodecap ? 2 * g->group.nodecap : 4;
    fl_pool **a = realloc(g->group.nodes, (size_t)cap * sizeof *a);
    if (!a) return -1;
    g->group.nodes = a;
    g->group.nodecap = cap;
  }
  g->group.nodes[g->group.nnodes++] = n;
  return g->group.nnodes - 1;
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
  for (i = 0; i < g->group.nnodes; i++)
    if (g->group.nodes[i]->o.port == port && strcmp(g->group.nodes[i]->o.host, host) == 0) return i;
  if (!(n = calloc(1, sizeof *n))) return -1;
  n->refs = 1;
  n->ops = &fl_kind_single;
  n->o = g->o; /* scalars; the strings are copied below */
  n->o.path = NULL;
  n->o.host = dup(host);
  n->o.username = dup(g->o.username);
  n->o.password = dup(g->o.password);
  n->o.prefix = malloc(g->o.prefixlen + 1); /* bytes: a NUL may be one */
  if (n->o.prefix) memcpy(n->o.prefix, g->o.prefix, g->o.prefixlen + 1);
  n->o.port = port;
  n->o.cluster = 1;
  n->o.tls = fl_tls_ref(g->o.tls); /* nodes speak TLS when the seeds do */
  n->maxconn = g->maxconn;
  n->has_park = g->has_park;
  snprintf(n->o.where, sizeof n->o.where, strchr(host, ':') ? "[%s]:%d" : "%s:%d",
           host, port);
  if (!n->o.host || !n->o.prefix || (g->o.username && !n->o.username) ||
      (g->o.password && !n->o.password) || (i = fl_group_add(g, n)) < 0) {
    fl_pool_unref(n);
    return -1;
  }
  return i;
}

/* pool:info() -> { kind=, nodes = {"host:port", ...}, moved=, asked= } */
int fl_group_info(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  int i;
  lua_createtable(L, 0, 4);
  lua_pushstring(L, g->ops->name);
  lua_setfield(L, -2, "kind");
  lua_createtable(L, g->group.nnodes, 0);
  for (i = 0; i < g->group.nnodes; i++) {
    lua_pushstring(L, g->group.nodes[i]->o.where);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "nodes");
  lua_pushinteger(L, (lua_Integer)g->group.moved);
  lua_setfield(L, -2, "moved");
  lua_pushinteger(L, (lua_Integer)g->group.asked);
  lua_setfield(L, -2, "asked");
  return 1;
}

/* pool:redirects() -> moved, asked (cheap: for the cluster layer's checks) */
int fl_group_redirects(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  lua_pushinteger(L, (lua_Integer)g->group.moved);
  lua_pushinteger(L, (lua_Integer)g->group.asked);
  return 2;
}
