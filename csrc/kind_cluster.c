/*
 * Redis Cluster.  Every request goes to the node that serves the lock key's
 * hash slot (slot map from CLUSTER SLOTS, given by the Lua layer through
 * pool:setslots); MOVED updates that slot and goes on, ASK sends ASKING +
 * the command once, on the same connection; TRYAGAIN (a slot migrating) and
 * CLUSTERDOWN wait a little and try again, within the command's timeout.
 * At most MAX_HOPS redirects per request: no retry storm.  A node that
 * refuses or drops the connection is replaced by another node (which
 * answers MOVED to whoever serves the slot now), twice at most.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fan.h"

#define MAX_HOPS 5

static void cluster_setup(lua_State *L, fl_pool *g, int n) {
  int i;
  if (!(g->group.slots = calloc(16384, sizeof *g->group.slots))) luaL_error(L, "fluxalock: out of memory");
  g->o.cluster = 1;
  for (i = 1; i <= n; i++) {
    char host[256];
    int port;
    lua_rawgeti(L, 3, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    snprintf(host, sizeof host, "%s", luaL_checkstring(L, -2));
    port = (int)luaL_checkinteger(L, -1);
    if (fl_group_node(g, host, port) < 0) luaL_error(L, "fluxalock: out of memory");
    lua_pop(L, 3);
  }
}

/* the node that serves the slot of the full key lkey */
static fl_pool *slot_node(fl_pool *g, const char *lkey, size_t len) {
  unsigned short i = g->group.slots[fl_slot(lkey, len)];
  return g->group.nodes[i ? i - 1 : 0];
}

static int cluster_nodes(fl_pool *g, const char *lkey, size_t len, fl_pool **out) {
  out[0] = slot_node(g, lkey, len);
  return 1;
}

static int starts(const redisReply *r, const char *p) {
  return r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, p, strlen(p)) == 0;
}

/* MOVED or ASK: follow it, at most MAX_HOPS times */
static void redirect(fl_fan *f, fl_leg *l, const redisReply *r) {
  fl_pool *g = f->g;
  const char *op = l->c->op;
  char host[256];
  unsigned slot;
  int port, idx, ask = starts(r, "ASK ");
  if (!fl_redirect_parse(r->str, l->node->o.host, &slot, host, sizeof host, &port)) {
    fl_leg_fail(l, FL_E_SERVER, "fluxalock: %s %s: %s", op, l->node->o.where, r->str);
    return;
  }
  if (++l->hops > MAX_HOPS) {
    fl_leg_fail(l, FL_E_SERVER, "fluxalock: %s %s: more than %d redirects (last: %s)", op,
                l->node->o.where, MAX_HOPS, r->str);
    return;
  }
  if ((idx = fl_group_node(g, host, port)) < 0) {
    fl_leg_fail(l, FL_E_IO, "fluxalock: out of memory");
    return;
  }
  fl_req_end(l->c);
  l->c = NULL;
  if (ask) {
    g->group.asked++;
  } else {
    g->group.moved++;
    g->group.slots[slot] = (unsigned short)(idx + 1);
  }
  l->node = g->group.nodes[idx];
  l->asking = ask;
  fl_leg_start(f, l);
}

static int cluster_on_reply(fl_fan *f, fl_leg *l, const redisReply *r) {
  if (starts(r, "MOVED ") || starts(r, "ASK ")) {
    redirect(f, l, r);
    return 1;
  }
  if (starts(r, "TRYAGAIN") || starts(r, "CLUSTERDOWN")) {
    /* a slot in migration with some keys moved, or a cluster that is
       failing over: a moment later it is done */
    double now = fl_now(), pause = 0.002 * (1 << (l->tries < 5 ? l->tries : 5));
    if (l->until == 0) l->until = now + l->node->o.timeout;
    if (now + pause < l->until) {
      l->tries++;
      fl_req_end(l->c);
      l->c = NULL;
      l->st = LEG_PAUSE;
      l->resume = now + pause;
      return 1;
    }
  }
  return 0;
}

/* a node refused or dropped the connection: ask the next one */
static int cluster_fallback(fl_fan *f, fl_leg *l) {
  fl_pool *g = f->g;
  int i, cur = 0;
  if (g->group.nnodes < 2 || l->fallbacks >= 2) return 0;
  for (i = 0; i < g->group.nnodes; i++)
    if (g->group.nodes[i] == l->node) cur = i;
  fl_req_end(l->c);
  l->c = NULL;
  l->fallbacks++;
  l->asking = 0;
  l->node = g->group.nodes[(cur + 1) % g->group.nnodes];
  fl_leg_start(f, l);
  return 1;
}

/* a CLUSTER SLOTS node (its table at -3) whose endpoint is unknown (Redis 7's
   cluster-preferred-endpoint-type unknown-endpoint): its "ip" metadata
   (Redis 7), else the host of the seeds the map came from */
static void unknown_endpoint(lua_State *L, fl_pool *g, char *host, size_t cap) {
  const char *ip = NULL;
  if (lua_rawgeti(L, -3, 4) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    if (lua_tostring(L, -2) && strcmp(lua_tostring(L, -2), "ip") == 0) ip = lua_tostring(L, -1);
    if (ip && *ip) snprintf(host, cap, "%s", ip);
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (!ip || !*ip) snprintf(host, cap, "%s", g->group.nnodes > 0 ? g->group.nodes[0]->o.host : "127.0.0.1");
}

/* pool:setslots(reply of CLUSTER SLOTS) -> number of slots mapped */
int fl_cluster_setslots(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  int i, n, mapped = 0;
  luaL_argcheck(L, g->ops == &fl_kind_cluster, 1, "not a cluster pool");
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
    if (!host[0] || strcmp(host, "?") == 0) unknown_endpoint(L, g, host, sizeof host);
    if (port < 1 || port > 65535) return luaL_argerror(L, 2, "bad port in CLUSTER SLOTS");
    if ((idx = fl_group_node(g, host, port)) < 0) return luaL_error(L, "fluxalock: out of memory");
    for (s = from; s <= to; s++) g->group.slots[s] = (unsigned short)(idx + 1);
    mapped += (int)(to - from + 1);
    lua_pop(L, 6);
  }
  lua_pushinteger(L, mapped);
  return 1;
}

/* call: the Lua layer loads CLUSTER SLOTS over the group's connections */
const fl_kind fl_kind_cluster = {
  "cluster", 1, 1, cluster_setup, cluster_nodes, slot_node, cluster_on_reply,
  cluster_fallback, NULL, fl_verdict_one, NULL,
};
