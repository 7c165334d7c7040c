/*
 * fl_pool: the options and connections of one Redis server, and the
 * fluxalock.Pool userdata the Lua layer drives (obtain, await).
 *
 * A pool opens at most max_connections links (conn_io.c) to its server and
 * pipelines the requests of any number of coroutines over them.  A plain
 * script has one request at a time, so it uses one.
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "fluxalock.h"
#include "net.h"

typedef struct pool_ud {
  fl_pool *p;
} pool_ud;

/* ---- the C object ---------------------------------------------------------- */

fl_pool *fl_pool_ref(fl_pool *p) {
  p->refs++;
  return p;
}

void fl_opts_free(fl_opts *o) {
  free(o->host);
  free(o->path);
  free(o->username);
  if (o->password) { /* do not leave the secret in freed memory */
    memset(o->password, 0, strlen(o->password));
    free(o->password);
  }
  free(o->prefix);
  fl_tls_unref(o->tls);
  o->host = o->path = o->username = o->password = o->prefix = NULL;
  o->tls = NULL;
}

static int sdup(char **dst, const char *s) {
  size_t n;
  *dst = NULL;
  if (!s) return 0;
  n = strlen(s) + 1;
  if (!(*dst = malloc(n))) return -1;
  memcpy(*dst, s, n);
  return 0;
}

/* a deep copy of src (the renewal thread keeps its own): 0, or -1 when out
   of memory (then dst holds nothing to free).  A new string option must be
   copied here and freed in fl_opts_free. */
int fl_opts_copy(fl_opts *dst, const fl_opts *src) {
  *dst = *src; /* the scalars and where[] */
  fl_tls_ref(dst->tls); /* shared, counted */
  if (sdup(&dst->host, src->host) | sdup(&dst->path, src->path) |
      sdup(&dst->username, src->username) | sdup(&dst->password, src->password) |
      sdup(&dst->prefix, src->prefix)) {
    fl_opts_free(dst);
    return -1;
  }
  return 0;
}

void fl_pool_unref(fl_pool *p) {
  int i;
  if (!p || --p->refs > 0) return;
  fl_pool_flush(p);
  while (p->pending) { /* could not be sent: the TTL will free them */
    fl_pending *d = p->pending;
    p->pending = d->next;
    free(d);
  }
  fl_sub_free(p);
  for (i = 0; i < p->nlinks; i++) fl_link_free(p->links[i]);
  free(p->links);
  while (p->allreqs) {
    fl_conn *c = p->allreqs;
    p->allreqs = c->nextall;
    fl_conn_free(c);
  }
  free(p->wakes);
  fl_multi_free(p);
  fl_renew_pool_free(p);
  fl_opts_free(&p->o);
  free(p);
}

/* a request object (free, or a new one): requests are cheap, links are not */
fl_conn *fl_pool_conn(fl_pool *p) {
  fl_conn *c = p->freereqs;
  if (c) {
    p->freereqs = c->nextfree;
  } else {
    if (!(c = calloc(1, sizeof *c))) return NULL;
    c->pool = p;
    c->nextall = p->allreqs;
    p->allreqs = c;
  }
  c->nextfree = NULL;
  c->busy = 1;
  c->wkey = c;
  c->link = NULL;
  c->asking = 0;
  return c;
}

/* no request of p in flight (a __gc release must not cut into one) */
static int pool_quiet(const fl_pool *p) {
  int i;
  for (i = 0; i < p->nlinks; i++)
    if (!fl_link_idle(p->links[i])) return 0;
  return 1;
}

void fl_pool_defer(fl_pool *p, const char *key, size_t keylen,
                   const char *wake, size_t wakelen, const char *token) {
  fl_pending *d = malloc(sizeof *d + keylen + wakelen);
  if (!d) return; /* best effort: the lock's TTL still frees it */
  d->key = (char *)(d + 1);
  d->wake = d->key + keylen;
  memcpy(d->key, key, keylen);
  memcpy(d->wake, wake, wakelen);
  memcpy(d->token, token, FL_TOKEN_LEN);
  d->keylen = keylen;
  d->wakelen = wakelen;
  d->next = p->pending;
  p->pending = d;
}

/* send deferred releases now, blocking (bounded by the pool's timeouts) */
void fl_pool_flush(fl_pool *p) {
  fl_conn *c;
  if (!p->pending || !pool_quiet(p) || !(c = fl_pool_conn(p))) return;
  c->cmd.argc = 0;
  c->cmd.script = -1;
  fl_cmd_arg(&c->cmd, "PING", 4);
  if (fl_conn_begin(c, "release", 0) != FL_ERR) fl_run(NULL, c, 0, NULL, 0);
  fl_conn_end(c);
}

/* ---- the userdata ---------------------------------------------------------- */

static fl_pool *checkpool(lua_State *L) {
  pool_ud *u = luaL_checkudata(L, 1, FL_POOL_MT);
  if (!u->p) luaL_argerror(L, 1, "pool is closed");
  return u->p;
}

fl_pool *fl_checkpool(lua_State *L, int idx) {
  pool_ud *u = luaL_checkudata(L, idx, FL_POOL_MT);
  if (!u->p) luaL_argerror(L, idx, "pool is closed");
  return u->p;
}

/* the host's wait function at index 'at', or 0 for poll(2) */
static int host_index(lua_State *L, fl_pool *p, int poolidx, int at) {
  lua_settop(L, at - 1);
  if (!p->has_host) return 0;
  lua_getiuservalue(L, poolidx, 1);
  return at;
}

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
  pool_ud *u;
  fl_opts *o;
  luaL_checktype(L, 1, LUA_TTABLE);
  u = lua_newuserdatauv(L, sizeof *u, 3); /* host wait fn; recover fn (multi.c);
                                               log fn (stats.c) */
  u->p = NULL;
  luaL_setmetatable(L, FL_POOL_MT);
  if (!(p = calloc(1, sizeof *p))) return luaL_error(L, "fluxalock: out of memory");
  u->p = p; /* owned by the userdata from here: __gc frees it */
  p->refs = 1;
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
  o->prefixlen = strlen(o->prefix);
  {
    const char *open = strchr(o->prefix, '{');
    const char *close = open ? strchr(open, '}') : NULL;
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
  pool_ud *u = luaL_checkudata(L, 1, FL_POOL_MT);
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
    for (j = 0; j < p->nnodes; j++) p->nodes[j]->has_park = p->has_park;
  }
  lua_setiuservalue(L, 1, 1);
  return 0;
}

/* drop p's idle links; the next call reconnects */
void fl_pool_close_idle(fl_pool *p) {
  int i;
  fl_pool_flush(p);
  for (i = 0; i < p->nlinks; i++)
    if (fl_link_idle(p->links[i]) && p->links[i]->state != FL_LK_CLOSED) {
      fl_link_close(p->links[i], "closed");
      p->links[i]->ever = 0; /* closed on purpose: the next connect is no reconnect */
    }
}

/* pool:close(): drop idle connections; the next call reconnects */
static int pool_close(lua_State *L) {
  fl_pool *p = checkpool(L);
  fl_pool_close_idle(p);
  fl_multi_close(p);
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
  for (j = 0; j < p->nnodes; j++) count_links(p->nodes[j], &open, &total);
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

/* ---- obtain ---------------------------------------------------------------- */

/* stack: 1 pool, 2 key, 3 ms, 4 nil, 5 host fn?, 6 lock */
#define OBTAIN_LOCK 6

static int obtain_result(lua_State *L, fl_conn *c, int st) {
  fl_lock *lk = lua_touserdata(L, OBTAIN_LOCK);
  redisReply *r;
  long long n;
  if (st == FL_ERR) return fl_push_error(L, c);
  r = c->reply;
  if (r->type == REDIS_REPLY_ERROR) return fl_push_reply_error(L, c);
  n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  fl_conn_end(c);
  if (n < 0) {
    fl_conn_disconnect(c); /* a reply we do not understand: not Redis? */
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: obtain %s: unexpected reply", c->pool->o.where);
    return 2;
  }
  if (n == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (c->pool->o.replicas > 0 && c->acked < c->pool->o.replicas) {
    /* set on the master only: a failover now could lose it; undo it */
    fl_pool *p = c->pool;
    int acked = (int)(c->acked < 0 ? 0 : c->acked); /* c is reused below */
    size_t wakelen;
    char *wake = fl_companion_dup(&p->o, lk->key + lk->prefixlen,
                                  lk->keylen - lk->prefixlen, "wake:", &wakelen);
    if (wake) {
      fl_pool_defer(p, lk->key, lk->keylen, wake, wakelen, lk->token);
      free(wake);
      if (!p->has_host) fl_pool_flush(p);
    }
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: obtain %s: %d of %d replicas acknowledged the lock",
                    p->o.where, acked, p->o.replicas);
    return 2;
  }
  lk->fence = n;
  lk->held = 1;
  lua_settop(L, OBTAIN_LOCK);
  return 1;
}

/* counted and logged (stats.c): the key is at 2 */
static int obtain_finish(lua_State *L, fl_conn *c, int st) {
  size_t keylen;
  const char *key = lua_tolstring(L, 2, &keylen);
  return fl_done(L, c->pool, NULL, FL_OP_OBTAIN, key, keylen, c->t0,
                 obtain_result(L, c, st), 1);
}

static int obtain_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 5, obtain_k, ctx);
  return obtain_finish(L, c, st);
}

/* pool:obtain(key, ms) -> lock | false | nil, message */
static int pool_obtain(lua_State *L) {
  fl_pool *p = checkpool(L);
  size_t keylen, fencelen;
  const char *key;
  lua_Integer ms;
  if (p->kind) return fl_multi_obtain(L);
  key = luaL_checklstring(L, 2, &keylen);
  ms = luaL_checkinteger(L, 3);
  int hidx;
  fl_conn *c;
  fl_lock *lk;
  const char *fence;
  hidx = host_index(L, p, 1, 5);
  lua_settop(L, 5);
  lk = fl_lock_new(L, 1, p, key, keylen); /* at OBTAIN_LOCK */
  if (fl_token(lk->token) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, "fluxalock: obtain: no random bytes from the kernel");
    return 2;
  }
  /* one fence counter per hash slot: named after the lock key's slot */
  if (!(c = fl_pool_conn(p)) ||
      !(fence = fl_companion(c, key, keylen, "fence", 0, &fencelen)))
    return luaL_error(L, "fluxalock: out of memory");
  snprintf(c->num[0], sizeof c->num[0], "%lld", (long long)ms);
  fl_cmd_script(&c->cmd, FL_S_OBTAIN, 2);
  fl_cmd_arg(&c->cmd, lk->key, lk->keylen);
  fl_cmd_arg(&c->cmd, fence, fencelen);
  fl_cmd_arg(&c->cmd, lk->token, FL_TOKEN_LEN);
  fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
  if (fl_conn_begin(c, "obtain", 0) == FL_ERR) return obtain_finish(L, c, FL_ERR);
  return obtain_finish(L, c, fl_run(L, c, hidx, obtain_k, (lua_KContext)c));
}

/* ---- await: block on the key's wake-up list ------------------------------ */

static int await_result(lua_State *L, fl_conn *c, int st) {
  int woke;
  if (st == FL_ERR) return fl_push_error(L, c);
  if (st == FL_LATE) { /* the obtain's deadline came first */
    fl_conn_end(c);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (c->reply->type == REDIS_REPLY_ERROR) return fl_push_reply_error(L, c);
  woke = c->reply->type == REDIS_REPLY_ARRAY;
  fl_conn_end(c);
  lua_pushboolean(L, woke);
  return 1;
}

static int await_finish(lua_State *L, fl_conn *c, int st) {
  size_t keylen;
  const char *key = lua_tolstring(L, 2, &keylen);
  return fl_done(L, c->pool, NULL, FL_OP_AWAIT, key, keylen, c->t0,
                 await_result(L, c, st), 1);
}

static int await_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 5, await_k, ctx);
  return await_finish(L, c, st);
}

/*
 * pool:await(key, seconds, limit) -> true (woken) | false (timed out) |
 * nil, msg.  Redis times BLPOP out only as often as its event loop ticks
 * (every 100 ms at the default hz 10), so the server's timeout cannot be
 * trusted to end a wait on time: 'limit' (seconds from now) is enforced here,
 * and a BLPOP still blocked then is abandoned with its connection.
 */
static int pool_await(lua_State *L) {
  fl_pool *p = checkpool(L);
  size_t keylen, wakelen;
  const char *key;
  lua_Number secs, limit;
  int hidx;
  fl_conn *c;
  const char *wake;
  if (p->kind) return fl_multi_await(L);
  key = luaL_checklstring(L, 2, &keylen);
  secs = luaL_checknumber(L, 3);
  limit = luaL_optnumber(L, 4, 0);
  hidx = host_index(L, p, 1, 5);
  c = fl_pool_conn(p);
  if (!c || !(wake = fl_companion(c, key, keylen, "wake:", 1, &wakelen)))
    return luaL_error(L, "fluxalock: out of memory");
  if (secs < 0.001) secs = 0.001; /* BLPOP 0 would block for ever */
  snprintf(c->num[0], sizeof c->num[0], "%.3f", (double)secs);
  c->cmd.argc = 0;
  c->cmd.script = -1;
  fl_cmd_arg(&c->cmd, "BLPOP", 5);
  fl_cmd_arg(&c->cmd, wake, wakelen);
  fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
  if (fl_conn_begin(c, "wait", secs) == FL_ERR) return await_finish(L, c, FL_ERR);
  if (limit > 0) c->limit = fl_now() + limit;
  return await_finish(L, c, fl_run(L, c, hidx, await_k, (lua_KContext)c));
}

/* ---- call: any command, for tools, tests and discovery ------------------- */

#define REPLY_BOX "fluxalock.Reply"

static int box_gc(lua_State *L) {
  redisReply **b = luaL_checkudata(L, 1, REPLY_BOX);
  if (*b) freeReplyObject(*b);
  *b = NULL;
  return 0;
}

static void push_reply(lua_State *L, const redisReply *r) {
  size_t i;
  luaL_checkstack(L, 4, "reply too deep");
  switch (r->type) {
  case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)r->integer); break;
  case REDIS_REPLY_NIL: lua_pushnil(L); break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)r->elements, 0);
    for (i = 0; i < r->elements; i++) {
      push_reply(L, r->element[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  default: lua_pushlstring(L, r->str ? r->str : "", r->str ? (size_t)r->len : 0);
  }
}

static int call_result(lua_State *L, fl_conn *c, int st) {
  redisReply **box;
  if (st == FL_ERR) return fl_push_error(L, c);
  if (c->reply->type == REDIS_REPLY_ERROR) return fl_push_reply_error(L, c);
  /* box the reply before building Lua values: a memory error while
     converting then leaves it to the box's __gc, not leaked */
  box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, REPLY_BOX)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  *box = c->reply;
  c->reply = NULL;
  fl_conn_end(c);
  push_reply(L, *box);
  freeReplyObject(*box);
  *box = NULL;
  return 1;
}

/* the command word (anchored on the stack) names the event, never the
   arguments: call{"AUTH", password} logs "AUTH" */
static int call_finish(lua_State *L, fl_conn *c, int st) {
  const char *word = c->cmd.argv[0];
  size_t len = c->cmd.argvlen[0];
  return fl_done(L, c->pool, NULL, FL_OP_CALL, word, len, c->t0,
                 call_result(L, c, st), 1);
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  fl_conn *c = (fl_conn *)ctx;
  int st = fl_resume(L, c, status);
  if (st != FL_ERR) st = fl_run(L, c, 3, call_k, ctx);
  return call_finish(L, c, st);
}

/* pool:call({"CMD", arg, ...}) -> reply as Lua values | nil, message */
static int pool_call(lua_State *L) {
  fl_pool *p = checkpool(L);
  int n, i, hidx;
  fl_conn *c;
  if (p->kind) return luaL_error(L, "fluxalock: call is for single-server pools");
  luaL_checktype(L, 2, LUA_TTABLE);
  n = (int)luaL_len(L, 2);
  luaL_argcheck(L, n >= 1 && n <= FL_MAXARGS + 3, 2, "1 to 9 command words");
  hidx = host_index(L, p, 1, 3);
  lua_settop(L, 3);
  if (!(c = fl_pool_conn(p))) return luaL_error(L, "fluxalock: out of memory");
  c->cmd.argc = 0;
  c->cmd.script = -1;
  for (i = 1; i <= n; i++) { /* the words stay anchored on the stack */
    size_t len;
    const char *s;
    lua_rawgeti(L, 2, i);
    if (!(s = lua_tolstring(L, -1, &len)))
      luaL_argerror(L, 2, "command words must be strings or numbers");
    fl_cmd_arg(&c->cmd, s, len);
  }
  if (fl_conn_begin(c, "call", 0) == FL_ERR) return call_finish(L, c, FL_ERR);
  return call_finish(L, c, fl_run(L, c, hidx, call_k, (lua_KContext)c));
}

static int core_now(lua_State *L) {
  lua_pushnumber(L, fl_now());
  return 1;
}

int fl_pool_open(lua_State *L) {
  static const luaL_Reg meth[] = {
    {"obtain", pool_obtain},   {"await", pool_await},
    {"sethost", pool_sethost}, {"close", pool_close},
    {"connections", pool_connections}, {"where", pool_where},
    {"call", pool_call}, {"retarget", pool_retarget},
    {"group", fl_multi_group}, {"setslots", fl_multi_setslots},
    {"info", fl_multi_info}, {"redirects", fl_multi_redirects},
    {"setrecover", fl_multi_setrecover}, {NULL, NULL}};
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
