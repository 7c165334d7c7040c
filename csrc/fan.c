/*
 * The fan engine: every request of every pool kind.
 *
 * A request is a fan userdata on the Lua stack (at FAN_SELF) holding one
 * leg per server asked, each with its fl_req queued on that server's links.
 * The driver (drive.c) steps the legs (fl_leg_step) and waits for them;
 * when no leg runs, the kind's verdict turns the legs' answers into the
 * method's results.  The fan holds a reference on its pool
 * and has a __gc: a coroutine abandoned in the middle of a request gives its
 * requests back (their replies are dropped as they come).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <poll.h>

#include "fan.h"

#define FAN_MT "fluxalock.Request"

const char *fl_opname(int op) {
  static const char *names[] = {"obtain", "wait", "release", "release",
                                "ttl",    "refresh", "call"};
  return names[op];
}

/* ---- legs ------------------------------------------------------------------ */

/* l failed (code: FL_E_*) with the message fmt: kept in its request
   until the fan ends */
void fl_leg_fail(fl_leg *l, int code, const char *fmt, ...) {
  char msg[FL_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  l->st = LEG_ERR;
  l->code = (unsigned char)code;
  if (!l->c) {
    l->err = "fluxalock: out of memory";
    return;
  }
  fl_req_detach(l->c);
  fl_req_setmsg(l->c, msg);
  l->err = fl_req_errmsg(l->c);
}

static void leg_drop(fl_leg *l) {
  if (l->c) fl_req_end(l->c);
  l->c = NULL;
  if (l->reply) freeReplyObject(l->reply);
  l->reply = NULL;
}

/* the command of f->op for l's node, into c */
static int leg_cmd(fl_fan *f, fl_req *c, double *extra) {
  const char *comp = NULL;
  size_t complen = 0;
  int op = f->op;
  if (op == FL_OP_CALL) {
    c->cmd = *f->call;
    return 0;
  }
  if (f->mode && op != FL_OP_AWAIT) return fl_mode_cmd(f, c);
  if (op != FL_OP_TTL && op != FL_OP_REFRESH &&
      !(comp = fl_companion(c, FAN_KEY(f), FAN_KEYLEN(f),
                            op == FL_OP_OBTAIN || f->hand ? "fence" : "wake:",
                            op != FL_OP_OBTAIN && !f->hand, &complen)))
    return -1;
  if (f->hand && (op == FL_OP_RELEASE || op == FL_OP_CLOSE)) {
    fl_cmd_handover(&c->cmd, c->num[0], f->lkey, f->lkeylen, comp, complen, f->token,
                    f->hand->token, f->ms);
    return 0;
  }
  switch (op) {
  case FL_OP_OBTAIN:
    fl_cmd_obtain(&c->cmd, c->num[0], f->lkey, f->lkeylen, comp, complen, f->token, f->ms);
    break;
  case FL_OP_AWAIT:
    fl_cmd_await(&c->cmd, c->num[0], comp, complen, (double)f->ms / 1000.0);
    *extra = (double)f->ms / 1000.0;
    break;
  case FL_OP_RELEASE:
  case FL_OP_CLOSE:
    fl_cmd_release(&c->cmd, f->lkey, f->lkeylen, comp, complen, f->token);
    break;
  case FL_OP_TTL:
    fl_cmd_ttl(&c->cmd, f->lkey, f->lkeylen, f->token);
    break;
  default: /* FL_OP_REFRESH */
    fl_cmd_refresh(&c->cmd, c->num[0], f->lkey, f->lkeylen, f->token, f->ms, f->replace);
  }
  return 0;
}

/* build the command of f->op for l's node and queue it */
void fl_leg_start(fl_fan *f, fl_leg *l) {
  fl_req *c = fl_pool_conn(l->node);
  double extra = 0;
  l->c = c;
  if (!c || leg_cmd(f, c, &extra) != 0) {
    fl_leg_fail(l, FL_E_IO, "fluxalock: out of memory");
    return;
  }
  c->wkey = f; /* a reply for any leg wakes the fan's coroutine */
  c->asking = l->asking;
  /* one node's obtain given up before its answer fails the call: its lock
     goes back (conn.c).  Of several, only when the call is abandoned
     (fl_fan_abandon): a majority may hold it, a failed one is undone */
  c->orphan = f->op == FL_OP_OBTAIN && f->nlegs == 1;
  l->st = LEG_RUN;
  if (fl_req_begin(c, fl_opname(f->op), extra) == FL_ERR) {
    l->st = LEG_ERR;
    l->err = fl_req_errmsg(c);
    l->code = c->code;
    return;
  }
  if (f->op == FL_OP_AWAIT && f->limit > 0) c->limit = f->limit;
  /* not stepped yet: the first step writes (or connects), so the wait
     before it is for writability, never a stale POLLIN */
  c->events = POLLOUT;
}

/* an integer reply of an obtain or refresh that replicas had to confirm */
static int unacked(fl_fan *f, fl_leg *l) {
  const fl_req *c = l->c;
  int want = l->node->o.replicas;
  if (l->n <= 0 || (f->op != FL_OP_OBTAIN && f->op != FL_OP_REFRESH) || want <= 0 ||
      c->acked >= want)
    return 0;
  /* written on this master only: a failover could lose it */
  f->unacked = 1;
  fl_leg_fail(l, FL_E_REPLICAS, "fluxalock: %s %s: %d of %d replicas acknowledged the %s", c->op,
              l->node->o.where, (int)(c->acked < 0 ? 0 : c->acked), want,
              f->op == FL_OP_OBTAIN ? "lock" : "refresh");
  return 1;
}

/* an error reply that refuses the client's credentials (none given, or an
   ACL user's that AUTH no longer accepts), not the command */
static int auth_refused(const redisReply *r) {
  return r->str && (strncmp(r->str, "NOAUTH", 6) == 0 || strncmp(r->str, "WRONGPASS", 9) == 0);
}

/* l's reply has arrived: the kind may take it, else it is the answer */
static void leg_reply(fl_fan *f, fl_leg *l) {
  fl_req *c = l->c;
  redisReply *r = c->reply;
  if (f->ops->on_reply && f->ops->on_reply(f, l, r)) return;
  if (r->type == REDIS_REPLY_ERROR) {
    fl_leg_fail(l, auth_refused(r) ? FL_E_AUTH : FL_E_SERVER, "fluxalock: %s %s: %s", c->op,
                l->node->o.where, r->str ? r->str : "error");
    return;
  }
  if (f->op == FL_OP_CALL) {
    l->reply = r; /* the verdict boxes it */
    c->reply = NULL;
  } else if (f->op == FL_OP_AWAIT) {
    l->n = r->type == REDIS_REPLY_ARRAY;
  } else if (r->type == REDIS_REPLY_INTEGER && !(f->op == FL_OP_OBTAIN && r->integer < -1)) {
    /* (the obtain script answers a fence, 0, or -1: held in a mode) */
    l->n = r->integer;
    if (unacked(f, l)) return;
  } else {
    fl_req_disconnect(c); /* not Redis? */
    fl_leg_fail(l, FL_E_IO, "fluxalock: %s %s: unexpected reply", c->op, l->node->o.where);
    return;
  }
  fl_req_end(c);
  l->c = NULL;
  l->st = LEG_DONE;
}

/* a wait past its hard end: a BLPOP still blocked holds its link until the
   server answers, so the link goes (on purpose: no reconnect, stats.c) */
static void leg_late(fl_leg *l) {
  if (l->c->extra > 0 && l->c->link) {
    fl_link_close(l->c->link, "abandoned");
    l->c->link->ever = 0;
  }
  leg_drop(l);
  l->st = LEG_LATE;
}

void fl_leg_step(fl_fan *f, fl_leg *l, double now) {
  int st, timedout = 0;
  if (l->st == LEG_PAUSE && now >= l->resume) fl_leg_start(f, l);
  if (l->st != LEG_RUN) return;
  st = fl_req_step(l->c);
  if (st == FL_WAIT) {
    now = fl_now();
    if (l->c->limit > 0 && now >= l->c->limit) {
      leg_late(l);
      return;
    }
    if (now >= l->c->deadline) {
      st = fl_req_timeout(l->c);
      timedout = 1;
    }
  }
  if (st == FL_DONE) {
    leg_reply(f, l);
  } else if (st == FL_ERR) {
    /* a refused or dropped connection may have another node to ask; a
       timeout never (a frozen node would cost each try the whole timeout) */
    if (!timedout && f->ops->fallback && f->ops->fallback(f, l)) return;
    l->st = LEG_ERR;
    l->err = fl_req_errmsg(l->c);
    l->code = l->c->code;
  }
}

/* ---- the fan ------------------------------------------------------------------ */

/* every leg's request given back (a coroutine closed mid-wait: drive.c) */
void fl_fan_end_legs(fl_fan *f) {
  int i;
  for (i = 0; i < f->nlegs; i++) leg_drop(&f->legs[i]);
}

/* a release of f's lock on l's node, sent now for nobody (its reply is
   dropped; conn.c sends it once more as EVAL, against NOSCRIPT): the node
   said obtained, and the call that asked is gone */
static void release_node(fl_fan *f, fl_leg *l) {
  fl_req *c = fl_pool_conn(l->node);
  double extra = 0;
  int op = f->op;
  if (!c) return; /* best effort: the ttl still frees it */
  f->op = FL_OP_RELEASE; /* (an obtain's fan has no hand-over) */
  if (leg_cmd(f, c, &extra) == 0 && fl_req_begin(c, "release", 0) == FL_WAIT &&
      c->link->state == FL_LK_READY)
    fl_link_send(c->link);
  f->op = (unsigned char)op;
  fl_req_end(c);
}

/* the fan's coroutine is gone before the verdict (closed in a wait,
   collected): an obtain's lock goes back at once, not at its ttl.  A leg
   still running is released behind its obtain (conn.c), a node that has
   already said obtained (Redlock, while the others ran) is sent its
   release now, on any of its connections (its obtain is over) */
void fl_fan_abandon(fl_fan *f) {
  int i;
  for (i = 0; i < f->nlegs && f->op == FL_OP_OBTAIN; i++) {
    fl_leg *l = &f->legs[i];
    if (l->st == LEG_RUN && l->c) l->c->orphan = 1;
    if (l->st == LEG_DONE && l->n > 0 && l->node) {
      release_node(f, l);
      l->n = 0;
    }
  }
  fl_fan_end_legs(f);
}

void fl_fan_release(fl_fan *f) {
  fl_fan_end_legs(f);
  if (f->g && !f->onstack) fl_pool_unref(f->g);
  f->g = NULL;
}

/* a coroutine abandoned mid-request: its requests go back to the pool */
static int fan_gc(lua_State *L) {
  fl_fan *f = lua_touserdata(L, 1);
  if (f->g) fl_fan_abandon(f);
  if (f->g) fl_fan_release(f);
  return 0;
}

/* each leg's server, as the kind says now (a wait asks one) */
static void route(fl_fan *f) {
  fl_pool *nodes[FL_MAXNODES];
  int i;
  if (f->op == FL_OP_AWAIT) {
    f->nlegs = 1;
    f->legs[0].node = f->ops->await_node(f->g, f->lkey, f->lkeylen);
    return;
  }
  f->nlegs = (unsigned char)f->ops->nodes(f->g, f->lkey, f->lkeylen, nodes);
  for (i = 0; i < f->nlegs; i++) f->legs[i].node = nodes[i];
}

/* every leg anew with op (an undo, or a retry after recovery) */
void fl_fan_restart(fl_fan *f, int op) {
  int i;
  f->op = (unsigned char)op;
  f->phase++;
  for (i = 0; i < f->nlegs; i++) {
    fl_leg *l = &f->legs[i];
    leg_drop(l);
    l->hops = l->asking = l->tries = l->fallbacks = 0;
    l->until = 0;
    l->st = LEG_IDLE;
  }
  route(f);
  for (i = 0; i < f->nlegs; i++) fl_leg_start(f, &f->legs[i]);
}

/* nil, message, code: a single leg's own (code: its FL_E_*), or the
   quorum's story */
int fl_fan_failure(lua_State *L, const fl_fan *f, int errs, const char *first, int code) {
  lua_pushnil(L);
  if (f->nlegs == 1)
    lua_pushstring(L, first);
  else
    lua_pushfstring(L, "fluxalock: %s %s: %d of %d nodes failed, %d needed (%s)",
                    fl_opname(f->op), f->g->o.where, errs, f->nlegs, f->nlegs / 2 + 1, first);
  lua_pushstring(L, fl_code_name(f->nlegs == 1 ? code : FL_E_QUORUM));
  return 3;
}

/* a failed obtain is undone everywhere (a node that timed out may have set
   it too); its own verdict waits at FAN_UNDO meanwhile */
int fl_fan_undo(lua_State *L, fl_fan *f, int errs, const char *first, int code) {
  f->undo_errs = (unsigned char)errs;
  f->undo_code = (unsigned char)code;
  lua_settop(L, FAN_SELF);
  lua_pushstring(L, first ? first : "");
  fl_fan_restart(f, FL_OP_RELEASE);
  return -1;
}

/* the end of an undo: the obtain's answer (its message at FAN_UNDO) */
static int undone(lua_State *L, fl_fan *f) {
  if (f->undo_errs) { /* a quorum was out of reach, or the one node failed */
    f->op = FL_OP_OBTAIN;
    return fl_fan_failure(L, f, f->undo_errs, lua_tostring(L, FAN_UNDO), f->undo_code);
  }
  lua_pushboolean(L, 0);
  return 1;
}

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

/* a call's reply as Lua values: boxed first, so a memory error while
   converting leaves it to the box's __gc, not leaked */
static int push_call(lua_State *L, fl_leg *l) {
  redisReply **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, REPLY_BOX)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  *box = l->reply;
  l->reply = NULL;
  push_reply(L, *box);
  freeReplyObject(*box);
  *box = NULL;
  lua_remove(L, -2);
  return 1;
}

/* the answer of one leg (one server, a cluster slot, Sentinel's master) */
int fl_verdict_one(lua_State *L, fl_fan *f) {
  fl_lock *lk = lua_touserdata(L, FAN_LOCK);
  fl_leg *l = &f->legs[0];
  int done = l->st == LEG_DONE, err = l->st == LEG_ERR;
  switch (f->op) {
  case FL_OP_OBTAIN:
    if (done && l->n > 0) {
      lk->held = 1;
      lk->fence = l->n;
      if (lk->mode == 'p') lk->mode = 0; /* a plain lock now (modes.c) */
      lua_pushvalue(L, FAN_LOCK);
      return 1;
    }
    if (f->unacked) return fl_fan_undo(L, f, 1, l->err, l->code);
    if (done && l->n == -1) { /* held in a mode: the Lua layer queues */
      lua_pushboolean(L, 0);
      lua_pushliteral(L, "mode");
      return 2;
    }
    break;
  case FL_OP_RELEASE:
    if (f->phase > 0) return undone(L, f);
    /* fallthrough */
  case FL_OP_CLOSE:
    if (err) lk->held = 1; /* not known to be released: may try again */
    if (f->hand && done && l->n > 0) /* handed over: the waiter's lock */
      f->hand->fence = l->n;
    else if (f->hand && err) /* it may have been: given back */
      fl_fan_defer(f->hand);
    else if (f->hand)
      f->hand->held = 0;
    break;
  case FL_OP_TTL:
    if (err) break;
    if (!done || l->n < 0) lk->held = 0; /* expired or taken over */
    lua_pushnumber(L, done && l->n > 0 ? (lua_Number)l->n / 1000.0 : 0);
    return 1;
  case FL_OP_REFRESH:
    if (!err && !(done && l->n > 0)) lk->held = 0;
    break;
  case FL_OP_CALL:
    if (f->judge) f->judge(f->judgectx, done ? l->reply : NULL, err ? l->err : NULL, l->code);
    if (done) return push_call(L, l);
    break;
  default: /* FL_OP_AWAIT: woken, or not (LEG_LATE: the obtain's end came) */
    break;
  }
  if (err) return fl_fan_failure(L, f, 1, l->err, l->code);
  lua_pushboolean(L, done && l->n > 0);
  return 1;
}

/* a new fan, its legs routed for the full key lkey; the stack holds
   FAN_LOCK already (FAN_HOST gets the host table, from the Pool userdata at
   pooludx).  Under a host the fan is a userdata at FAN_SELF: the request
   may yield, and the collector ends it if its coroutine is dropped.  A
   plain script's request never yields, so with room (the caller's C
   stack) it costs no allocation: FAN_SELF is nil then */
fl_fan *fl_fan_new(lua_State *L, fl_pool *g, int op, int pooludx, const char *lkey,
                   size_t lkeylen, fl_fan_room *room) {
  fl_pool *nodes[FL_MAXNODES];
  fl_fan *f;
  int n = op == FL_OP_AWAIT ? 1 : g->ops->nodes(g, lkey, lkeylen, nodes);
  size_t size = offsetof(fl_fan, legs) + (size_t)n * sizeof(fl_leg);
  lua_settop(L, FAN_LOCK);
  if (g->has_host) {
    lua_getiuservalue(L, pooludx, 1);
    lua_replace(L, FAN_HOST);
    room = NULL;
  }
  if (room) {
    f = (fl_fan *)room->bytes;
    lua_pushnil(L); /* FAN_SELF */
  } else {
    f = lua_newuserdatauv(L, size, 0); /* FAN_SELF */
    if (luaL_newmetatable(L, FAN_MT)) {
      lua_pushcfunction(L, fan_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
  }
  memset(f, 0, size);
  /* a userdata fan may outlive its caller's stack (a dropped coroutine):
     it holds the pool; on the C stack the caller's arguments do */
  f->g = room ? g : fl_pool_ref(g);
  f->ops = g->ops;
  f->op = f->op0 = (unsigned char)op;
  f->hidx = g->has_host ? FAN_HOST : 0;
  f->start = fl_now();
  f->poolidx = (unsigned char)pooludx;
  f->lkey = lkey;
  f->lkeylen = lkeylen;
  f->onstack = room != NULL;
  return f;
}

/* route the legs and send them */
void fl_fan_start(fl_fan *f) {
  int i;
  route(f);
  for (i = 0; i < f->nlegs; i++) fl_leg_start(f, &f->legs[i]);
}

/* __gc (or a __close that cannot wait) of a held lock: its release is
   queued in front of the next request of each server it lives on */
void fl_fan_defer(fl_lock *lk) {
  fl_pool *g = lk->pool, *nodes[FL_MAXNODES];
  int i, n = g->ops->nodes(g, lk->key, lk->keylen, nodes);
  lk->held = 0;
  for (i = 0; i < n; i++) {
    size_t wakelen;
    char *wake = fl_companion_dup(&nodes[i]->o, lk->key + lk->prefixlen,
                                  lk->keylen - lk->prefixlen, "wake:", &wakelen);
    if (!wake) continue; /* best effort: the lock's TTL still frees it */
    fl_pool_defer(nodes[i], lk->key, lk->keylen, wake, wakelen, lk->token);
    if (nodes[i]->pending && memcmp(nodes[i]->pending->token, lk->token, FL_TOKEN_LEN) == 0)
      nodes[i]->pending->mode = lk->mode; /* (the entry just queued, not an older one) */
    free(wake);
    if (!g->has_host) fl_pool_flush(nodes[i]);
  }
}

/* a held lock released at once without waiting for the answer (a host's
   loop never stalls: fl_pool_flush) */
void fl_fan_drop(fl_lock *lk) {
  fl_pool *g = lk->pool, *nodes[FL_MAXNODES];
  int i, n = g->ops->nodes(g, lk->key, lk->keylen, nodes);
  fl_fan_defer(lk);
  for (i = 0; i < n; i++) fl_pool_flush(nodes[i]);
}
