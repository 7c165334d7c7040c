/*
 * The fluxalock.Pool userdata: options in (pool_new), the host table, and
 * the methods the Lua layer drives.  Every request (obtain, await, call) is
 * a fan (fan.c); a group's own methods are group.c's and its kind's.
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "fan.h"
#include "net.h"

static fl_pool *checkpool(lua_State *L) { return fl_checkpool(L, 1); }

static char *optstr(lua_State *L, int t, const char *k) {
  const char *s;
  size_t n;
  char *r;
  lua_getfield(L, t, k);
  s = lua_tolstring(L, -1, &n);
  r = s ? malloc(n + 1) : NULL;
  if (r) memcpy(r, s, n + 1);
  lua_pop(L, 1);
  return r;
}

static double optnum(lua_State *L, int t, const char *k, double d) {
  double v;
  lua_getfield(L, t, k);
  v = luaL_optnumber(L, -1, d);
  lua_pop(L, 1);
  return v;
}

/* core.pool{host=, port=, path=, db=, username=, password=, connect_timeout=,
   timeout=, prefix=}: options already validated by the Lua layer */
static int pool_new(lua_State *L) {
  fl_pool *p;
  fl_pool_ud *u;
  fl_opts *o;
  luaL_checktype(L, 1, LUA_TTABLE);
  u = lua_newuserdatauv(L, sizeof *u, 3); /* host wait fn; recover fn (multi.c);
                                               log fn (stats.c) */
  u->p = NULL;
  luaL_setmetatable(L, FL_POOL_MT);
  if (!(p = calloc(1, sizeof *p))) return luaL_error(L, "fluxalock: out of memory");
  u->p = p; /* owned by the userdata from here: __gc frees it */
  p->refs = 1;
  p->ops = &fl_kind_single;
  o = &p->o;
  o->host = optstr(L, 1, "host");
  o->path = optstr(L, 1, "path");
  o->username = optstr(L, 1, "username");
  o->password = optstr(L, 1, "password");
  o->prefix = optstr(L, 1, "prefix");
  o->port = (int)optnum(L, 1, "port", 6379);
  o->db = (int)optnum(L, 1, "db", 0);
  o->connect_timeout = optnum(L, 1, "connect_timeout", 1);
  o->timeout = optnum(L, 1, "timeout", 1);
  o->replicas = (int)optnum(L, 1, "replicas", 0);
  o->replica_timeout = optnum(L, 1, "replica_timeout", o->timeout);
  lua_getfield(L, 1, "tls"); /* a TLS object (core.tls), or nil */
  o->tls = fl_tls_ref(fl_totls(L, -1));
  lua_pop(L, 1);
  p->maxconn = (int)optnum(L, 1, "max_connections", 4);
  if (p->maxconn < 1) p->maxconn = 1;
  if (!o->prefix) o->prefix = calloc(1, 1);
  if (!o->host && !o->path) {
    o->host = malloc(10);
    if (o->host) memcpy(o->host, "127.0.0.1", 10);
  }
  if (!o->prefix || (!o->host && !o->path))
    return luaL_error(L, "fluxalock: out of memory");
  lua_getfield(L, 1, "prefix"); /* its bytes, a NUL among them maybe */
  if (!lua_tolstring(L, -1, &o->prefixlen)) o->prefixlen = 0;
  lua_pop(L, 1);
  {
    const char *open = memchr(o->prefix, '{', o->prefixlen);
    const char *close = open ? memchr(open, '}', o->prefixlen - (size_t)(open - o->prefix)) : NULL;
    o->prefix_tagged = close && close > open + 1;
  }
  if (o->path)
    snprintf(o->where, sizeof o->where, "unix:%s", o->path);
  else if (strchr(o->host, ':'))
    snprintf(o->where, sizeof o->where, "[%s]:%d", o->host, o->port);
  else
    snprintf(o->where, sizeof o->where, "%s:%d", o->host, o->port);
  return 1;
}

static int pool_gc(lua_State *L) {
  fl_pool_ud *u = luaL_checkudata(L, 1, FL_POOL_MT);
  fl_pool_unref(u->p);
  u->p = NULL;
  return 0;
}

/* pool:sethost(host | nil): waits go through host.wait(fd, "r"|"w",
   seconds); a host that also has park(key, seconds) and unpark(key) lets
   coroutines share the pool's links (docs/hosts.md) */
static int pool_sethost(lua_State *L) {
  fl_pool *p = checkpool(L);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  p->has_host = !lua_isnil(L, 2);
  p->has_park = 0;
  if (p->has_host) {
    lua_getfield(L, 2, "wait");
    luaL_argcheck(L, lua_isfunction(L, -1), 2, "host.wait must be a function");
    p->has_park = lua_getfield(L, 2, "park") == LUA_TFUNCTION &&
                  lua_getfield(L, 2, "unpark") == LUA_TFUNCTION;
    lua_settop(L, 2);
  }
  { /* a group's nodes share its host (their requests are the fan's legs) */
    int j;
    for (j = 0; j < p->group.nnodes; j++) p->group.nodes[j]->has_park = p->has_park;
  }
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* pool:close(): drop idle connections; the next call reconnects */
static int pool_close(lua_State *L) {
  fl_pool *p = checkpool(L);
  fl_pool_close_idle(p);
  fl_group_close(p);
  return 0;
}

static void count_links(const fl_pool *p, int *open, int *total) {
  int i;
  *total += p->nlinks;
  for (i = 0; i < p->nlinks; i++) *open += p->links[i]->state != FL_LK_CLOSED;
}

/* pool:connections() -> open, total */
static int pool_connections(lua_State *L) {
  fl_pool *p = checkpool(L);
  int j, open = 0, total = 0;
  count_links(p, &open, &total);
  for (j = 0; j < p->group.nnodes; j++) count_links(p->group.nodes[j], &open, &total);
  lua_pushinteger(L, open);
  lua_pushinteger(L, total);
  return 2;
}

static int pool_where(lua_State *L) {
  lua_pushstring(L, checkpool(L)->o.where);
  return 1;
}

/* pool:retarget(host, port): point the pool at another server (Sentinel
   found a new master).  Idle connections are dropped now, busy ones when
   their request ends (fl_pool.gen); locks follow, as they hold the pool. */
static int pool_retarget(lua_State *L) {
  fl_pool *p = checkpool(L);
  size_t n;
  const char *host = luaL_checklstring(L, 2, &n);
  lua_Integer port = luaL_checkinteger(L, 3);
  char *h;
  int i;
  luaL_argcheck(L, n > 0 && n < 200 && strlen(host) == n, 2, "host name expected");
  luaL_argcheck(L, port >= 1 && port <= 65535, 3, "port must be from 1 to 65535");
  if (!p->o.path && strcmp(p->o.host, host) == 0 && p->o.port == (int)port) {
    lua_pushboolean(L, 0); /* already there: keep the connections */
    return 1;
  }
  if (!(h = malloc(n + 1))) return luaL_error(L, "fluxalock: out of memory");
  memcpy(h, host, n + 1);
  free(p->o.host);
  free(p->o.path);
  p->o.path = NULL;
  p->o.host = h;
  p->o.port = (int)port;
  snprintf(p->o.where, sizeof p->o.where, strchr(h, ':') ? "[%s]:%d" : "%s:%d",
           h, p->o.port);
  p->gen++;
  for (i = 0; i < p->nlinks; i++)
    if (fl_link_idle(p->links[i])) fl_link_close(p->links[i], "retargeted");
  lua_pushboolean(L, 1);
  return 1;
}

/* pool:group("redlock", {pool, ...}, where), pool:group("sentinel", {pool},
   where) or pool:group("cluster", {{"host", port}, ...}, where): turn a
   fresh pool into a group of that kind */
static int pool_group(lua_State *L) {
  static const fl_kind *const kinds[] = {&fl_kind_redlock, &fl_kind_cluster, &fl_kind_sentinel};
  fl_pool *g = fl_checkpool(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  const char *where = luaL_checkstring(L, 4);
  size_t i;
  int n;
  luaL_checktype(L, 3, LUA_TTABLE);
  n = (int)luaL_len(L, 3);
  luaL_argcheck(L, fl_group_fresh(g), 1, "pool already in use");
  luaL_argcheck(L, n >= 1, 3, "at least one node");
  for (i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(kind, kinds[i]->name) == 0) break;
  if (i == sizeof kinds / sizeof kinds[0])
    return luaL_argerror(L, 2, "'redlock', 'cluster' or 'sentinel' expected");
  snprintf(g->o.where, sizeof g->o.where, "%s", where);
  kinds[i]->setup(L, g, n);
  g->ops = kinds[i];
  return 0;
}

/* pool:obtain(key, ms [, mode]) -> lock | false | nil, message (mode:
   modes.c) */
static int pool_obtain(lua_State *L) {
  fl_pool *p = checkpool(L);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  lua_Integer ms = luaL_checkinteger(L, 3);
  fl_lock *lk;
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE); /* a mode */
  lua_settop(L, FAN_HOST);
  lk = fl_lock_new(L, 1, p, key, keylen); /* at FAN_LOCK */
  if (fl_token(lk->token) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, "fluxalock: obtain: no random bytes from the kernel");
    lua_pushstring(L, fl_code_name(FL_E_IO));
    return 3;
  }
  if (!lua_isnil(L, 4) && fl_mode_read(L, 4, lk) != 0) luaL_argerror(L, 4, "mode expected");
  return fl_drive_obtain(L, lk, ms);
}

/* pool:call(round): the question of a Sentinel discovery round
   (kind_sentinel.c), which judges the reply; the round anchored at 2 */
static int call_round(lua_State *L, fl_sdisc *round) {
  fl_cmd *cmd;
  luaL_argcheck(L, round->step == FL_SD_SENTINEL || round->step == FL_SD_ROLE, 2,
                "the round has no question");
  lua_settop(L, 3);
  cmd = lua_newuserdatauv(L, sizeof *cmd, 0); /* 4 */
  lua_pushnil(L);                             /* FAN_HOST */
  lua_pushvalue(L, 2);                        /* FAN_LOCK */
  fl_sdisc_cmd(round, cmd); /* words: literals and the group's master name */
  return fl_drive_call(L, cmd, round);
}

/* pool:call({"CMD", arg, ...}) -> reply as Lua values | nil, message; the
   words are kept as strings in a table at FAN_LOCK, the command in a
   userdata at 4 */
static int pool_call(lua_State *L) {
  fl_pool *p = checkpool(L);
  int n, i;
  fl_cmd *cmd;
  fl_sdisc *round;
  if (!p->ops->call) return luaL_error(L, "fluxalock: call is not available on a %s pool", p->ops->name);
  if ((round = luaL_testudata(L, 2, FL_SDISC_MT))) return call_round(L, round);
  luaL_checktype(L, 2, LUA_TTABLE);
  n = (int)luaL_len(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 9, 2, "1 to 9 command words");
  lua_settop(L, 3);
  cmd = lua_newuserdatauv(L, sizeof *cmd, 0); /* 4 */
  lua_pushnil(L);                             /* FAN_HOST */
  lua_createtable(L, n, 0);                   /* FAN_LOCK */
  cmd->argc = 0;
  cmd->script = -1;
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    lua_rawgeti(L, 2, i);
    if (!lua_tolstring(L, -1, NULL))
      luaL_argerror(L, 2, "command words must be strings or numbers");
    lua_rawseti(L, FAN_LOCK, i); /* anchored there */
    lua_rawgeti(L, FAN_LOCK, i);
    s = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);
    fl_cmd_arg(cmd, s, len);
  }
  return fl_drive_call(L, cmd, NULL);
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, fl_now());
  return 1;
}

int fl_pool_open(lua_State *L) {
  static const luaL_Reg meth[] = {
    {"obtain", pool_obtain},   {"await", fl_drive_await},
    {"sethost", pool_sethost}, {"close", pool_close},
    {"connections", pool_connections}, {"where", pool_where},
    {"call", pool_call}, {"retarget", pool_retarget},
    {"group", pool_group}, {"setslots", fl_cluster_setslots},
    {"info", fl_group_info}, {"redirects", fl_group_redirects},
    {"setrecover", fl_sentinel_setrecover}, {"discovery", fl_sentinel_discovery},
    {"sentinel", fl_sentinel_pool}, {NULL, NULL}};
  static const luaL_Reg mt[] = {{"__gc", pool_gc}, {NULL, NULL}};
  luaL_newmetatable(L, FL_POOL_MT);
  luaL_setfuncs(L, mt, 0);
  luaL_newlib(L, meth);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, pool_new);
  lua_setfield(L, -2, "pool");
  lua_pushcfunction(L, core_now);
  lua_setfield(L, -2, "now");
  return 0;
}
