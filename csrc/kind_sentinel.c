/*
 * Sentinel: one node, the master that Sentinel named (the Lua layer finds
 * it and retargets the node).  A lock's release, ttl or refresh that fails
 * there calls the pool's recover function (pool:setrecover: it asks the
 * sentinels again) once, then tries again: a lock follows a failover by
 * itself.  Obtain and wait do not: the Lua layer looks itself.
 */
#include "fan.h"

static void sentinel_setup(lua_State *L, fl_pool *g, int n) {
  luaL_argcheck(L, n == 1, 3, "one node");
  lua_rawgeti(L, 3, 1);
  fl_group_add_pool(L, g, -1);
  lua_pop(L, 1);
}

static int sentinel_nodes(fl_pool *g, const char *lkey, size_t len, fl_pool **out) {
  (void)lkey;
  (void)len;
  out[0] = g->nodes[0];
  return 1;
}

static fl_pool *sentinel_await_node(fl_pool *g, const char *lkey, size_t len) {
  (void)lkey;
  (void)len;
  return g->nodes[0];
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
