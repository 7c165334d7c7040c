/*
 * The driver: the one place that waits.
 *
 * Every request of the userdata layer (fl_drive_obtain, _await, _lock,
 * _call) is a fan (fan.c) run here to its answer: drive() steps every leg
 * without blocking, then waits for them: with poll(2) on all their sockets
 * in a plain script (or in the receive itself, one leg on a plain socket),
 * or through the host table under an event-loop host.  There one coroutine per link (its
 * reader) waits on the socket through host.wait; the others park
 * (host.park, on their request's park key) and are unparked when a reader
 * has dispatched their replies (conn_io.c collects the wake-ups, drive.c
 * delivers them with host.unpark).  The host may yield: Lua then calls the
 * continuation k, which finds the fan on the stack and comes back here.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "fan.h"


/* call host.unpark(key) for every wake-up p collected; never yields.  An
   unpark runs Lua, so a collection may finalize an abandoned request that
   adds wake-ups meanwhile: the list is read afresh at each step */
void fl_wake_flush(lua_State *L, fl_pool *p, int hostidx) {
  int i;
  if (!p->nwakes) return;
  if (!L || !hostidx || lua_type(L, hostidx) != LUA_TTABLE) {
    p->nwakes = 0;
    return;
  }
  for (i = 0; i < p->nwakes; i++) {
    if (lua_getfield(L, hostidx, "unpark") != LUA_TFUNCTION) {
      lua_pop(L, 1);
      break;
    }
    lua_pushlightuserdata(L, p->wakes[i]);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1); /* best effort */
  }
  p->nwakes = 0;
}

/* deliver the wake-ups the fan's servers collected (other coroutines') */
static void fan_wakes(lua_State *L, fl_fan *f) {
  int i;
  if (!f->hidx) return;
  fl_wake_flush(L, f->g, f->hidx);
  for (i = 0; i < f->g->group.nnodes; i++) fl_wake_flush(L, f->g->group.nodes[i], f->hidx);
}

/* the host's wait failed (or a poll): every leg still running fails */
static void fail_running(fl_fan *f, const char *why) {
  int i;
  for (i = 0; i < f->nlegs; i++) {
    fl_leg *l = &f->legs[i];
    if (l->st != LEG_RUN && l->st != LEG_PAUSE) continue;
    if (!l->c && !(l->c = fl_pool_conn(l->node))) {
      fl_leg_fail(l, FL_E_IO, "out of memory");
      continue;
    }
    fl_leg_fail(l, FL_E_IO, "fluxalock: %s %s: host wait: %s", fl_opname(f->op), l->node->o.where, why);
  }
}

/*
 * The wait guard: a to-be-closed userdata on the coroutine's stack for one
 * host wait (its user value: the host table).  Armed, it points at the
 * fan, which reads its links for the requests behind it: a coroutine
 * closed in the wait (coroutine.close) closes it, and the fan gives its
 * requests back there, so the reading passes on and whoever was held up is
 * unparked at once (else they would sleep until the closed one's time was
 * up).  It also owns the epoll descriptor of a wait on several legs'
 * sockets.  The wait's end disarms it; the next wait, or the request's
 * return, closes it.
 */
#define GUARD_MT "fluxalock.wait"

typedef struct guard {
  fl_fan *f; /* NULL: disarmed */
  int fd;    /* the epoll descriptor, or -1 */
} guard;

static int guard_close(lua_State *L) { /* never raises, never yields */
  guard *g = lua_touserdata(L, 1);
  fl_fan *f = g ? g->f : NULL;
  int i;
  if (!g) return 0;
  if (g->fd >= 0) close(g->fd);
  g->fd = -1;
  g->f = NULL;
  if (!f || !f->g) return 0;
  fl_fan_abandon(f); /* their replies dropped, the reading handed on */
  lua_getiuservalue(L, 1, 1);
  fl_wake_flush(L, f->g, lua_gettop(L));
  for (i = 0; i < f->g->group.nnodes; i++) fl_wake_flush(L, f->g->group.nodes[i], lua_gettop(L));
  fl_fan_release(f);
  return 0;
}

/* collected (its coroutine dropped, not closed): the descriptor only; the
   fan's own __gc gives its requests back */
static int guard_gc(lua_State *L) {
  guard *g = lua_touserdata(L, 1);
  if (g && g->fd >= 0) close(g->fd);
  if (g) g->fd = -1;
  return 0;
}

/* the wait that pushed a guard is over: disarm it (at the top, or just
   below an error message) */
static void guard_off(lua_State *L, int status) {
  guard *g = luaL_testudata(L, status == LUA_OK || status == LUA_YIELD ? -1 : -2, GUARD_MT);
  if (g) g->f = NULL;
}

static guard *guard_on(lua_State *L, fl_fan *f) {
  guard *g = lua_newuserdatauv(L, sizeof *g, 1);
  g->f = NULL;
  g->fd = -1;
  if (luaL_newmetatable(L, GUARD_MT)) {
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, guard_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, f->hidx);
  lua_setiuservalue(L, -2, 1);
  lua_toclose(L, -1);
  return g;
}

/* one descriptor readable when any of the n sockets is ready: -1 when the
   kernel gives none (the first socket alone is watched then) */
static int watch_all(fl_req **watch, int n) {
  int i, fd = epoll_create1(EPOLL_CLOEXEC);
  for (i = 0; i < n && fd >= 0; i++) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (watch[i]->events & POLLOUT ? (unsigned)EPOLLOUT : 0u) |
                (watch[i]->events & POLLIN ? (unsigned)EPOLLIN : 0u);
    ev.data.fd = fl_req_fd(watch[i]);
    if (epoll_ctl(fd, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
      close(fd);
      fd = -1;
    }
  }
  return fd;
}

/* the legs whose links the fan may read (it is their reader); the others
   are unclaimed, and t shortened to when a reader of theirs is due back */
static int readable_legs(fl_fan *f, double now, double left, fl_req **watch, double *t) {
  int i, n = 0;
  for (i = 0; i < f->nlegs; i++) {
    fl_leg *l = &f->legs[i];
    fl_link *lk;
    if (l->st != LEG_RUN) continue;
    lk = l->c->link;
    if (fl_req_fd(l->c) >= 0 && n < FL_MAXNODES &&
        (!l->c->pool->has_park || fl_req_claim(l->c, now, left))) {
      watch[n++] = l->c;
      continue;
    }
    fl_req_unclaim(l->c);
    if (lk && lk->reader && lk->reader != l->c && lk->rdl + FL_READER_GRACE - now < *t)
      *t = lk->rdl + FL_READER_GRACE - now; /* a reader gone: look again then */
  }
  return n;
}

/* one wait of the fan under a host: on the sockets of the legs whose links
   it may read, through one descriptor (epoll) when there are several (a
   host waits on one; with the first Redlock node frozen, the others'
   replies lay unread for the whole timeout).  The wait is keyed on the
   fan, so a reader of another leg's link unparks it; with nothing to watch
   the fan parks on itself until a reader wakes it */
static int host_wait(lua_State *L, fl_fan *f, double now, double left, lua_KFunction k) {
  fl_req *watch[FL_MAXNODES];
  int n, park = f->g->has_park, wfd = -1;
  double t = left;
  if (luaL_testudata(L, -1, GUARD_MT)) lua_pop(L, 1); /* the last wait's: closed */
  n = readable_legs(f, now, left, watch, &t);
  fan_wakes(L, f); /* before this coroutine sleeps */
  if (n > 1 || (n && park)) {
    guard *g = guard_on(L, f);
    if (park) g->f = f;
    if (n > 1) g->fd = wfd = watch_all(watch, n);
  }
  /* one socket: its link's epoll descriptor (conn_io.c fl_link_hostfd) */
  if (n == 1) wfd = fl_link_hostfd(watch[0]->link, watch[0]->events);
  if (n) {
    lua_getfield(L, f->hidx, "wait");
    lua_pushinteger(L, wfd >= 0 ? wfd : fl_req_fd(watch[0]));
    lua_pushstring(L, wfd < 0 && watch[0]->events == POLLOUT ? "w" : "r");
    lua_pushnumber(L, t > 0.001 ? t : 0.001);
    if (!park) return lua_pcallk(L, 3, 0, 0, (lua_KContext)f, k);
    lua_pushlightuserdata(L, f); /* a reader of another leg's link unparks it */
    return lua_pcallk(L, 4, 0, 0, (lua_KContext)f, k);
  }
  if (lua_getfield(L, f->hidx, "park") != LUA_TFUNCTION) {
    /* a wait-only host and nothing to wait on (all legs pausing): short */
    lua_pop(L, 1);
    poll(NULL, 0, fl_poll_ms(left));
    return LUA_OK;
  }
  lua_pushlightuserdata(L, f);
  lua_pushnumber(L, t > 0.001 ? t : 0.001);
  return lua_pcallk(L, 2, 0, 0, (lua_KContext)f, k);
}

/* the legs' sockets, and the earliest moment one of them must be looked at */
static int gather(fl_fan *f, struct pollfd *pfd, int *np, double *until) {
  int i, active = 0;
  *np = 0;
  for (i = 0; i < f->nlegs; i++) {
    fl_leg *l = &f->legs[i];
    if (l->st == LEG_RUN) {
      double d = l->c->deadline;
      if (l->c->limit > 0 && l->c->limit < d) d = l->c->limit;
      if (d < *until) *until = d;
      if (fl_req_fd(l->c) >= 0 && *np < FL_MAXNODES) {
        pfd[*np].fd = fl_req_fd(l->c);
        pfd[*np].events = (short)l->c->events;
        pfd[*np].revents = 0;
        (*np)++;
      }
      active++;
    } else if (l->st == LEG_PAUSE) {
      if (l->resume < *until) *until = l->resume;
      active++;
    }
  }
  return active;
}

/* a plain script with one leg waiting for its reply waits in the receive
   itself where the transport can (conn_io.c fl_link_wait): 1 when it got
   bytes, 0 to poll for what is left */
static int plain_recv(fl_fan *f, double left) {
  fl_req *c = f->nlegs == 1 && f->legs[0].st == LEG_RUN ? f->legs[0].c : NULL;
  return c && c->events == POLLIN && c->link && fl_link_wait(c->link, c->wkey, left);
}

/* run every leg to its end (may yield through the host) */
static void drive(lua_State *L, fl_fan *f, lua_KFunction k) {
  int host = f->hidx && lua_type(L, f->hidx) == LUA_TTABLE;
  for (;;) {
    struct pollfd pfd[FL_MAXNODES];
    int i, np;
    double now = fl_now(), until = now + 3600;
    for (i = 0; i < f->nlegs; i++) fl_leg_step(f, &f->legs[i], now);
    if (f->ops->settle) f->ops->settle(f);
    now = fl_now();
    if (!gather(f, pfd, &np, &until)) {
      if (host) fan_wakes(L, f);
      return;
    }
    if (until < now) until = now;
    if (host) {
      int st = host_wait(L, f, now, until - now, k);
      guard_off(L, st);
      if (st != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        fail_running(f, m ? m : "error");
        lua_pop(L, 1);
        fan_wakes(L, f);
        return;
      }
    } else if (!plain_recv(f, until - now)) {
      int ms = fl_poll_ms(until - fl_now()); /* round up: never wake before */
      if (ms > 0 && poll(pfd, (nfds_t)np, ms) < 0 && errno != EINTR)
        fail_running(f, strerror(errno));
    }
  }
}

/* ---- the continuation -------------------------------------------------------------- */

static int fan_k(lua_State *L, int status, lua_KContext ctx);
static int recover_k(lua_State *L, int status, lua_KContext ctx);

/* after recover() returned (or raised): 1 when the request was started
   again on the pool's new target */
static int recovered(lua_State *L, fl_fan *f, int status) {
  int ok = (status == LUA_OK || status == LUA_YIELD) && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!ok) return 0;
  if (f->op == FL_OP_CLOSE || f->op == FL_OP_RELEASE) {
    fl_lock *lk = lua_touserdata(L, FAN_LOCK);
    lk->held = 0; /* as before the first try */
  }
  fl_fan_restart(f, f->op);
  f->phase = 0;
  return 1;
}

/* the verdict's r results (on top): counted and logged once per operation
   (stats.c); then the fan gives its requests back */
static int fan_done(lua_State *L, fl_fan *f, int r) {
  int op = f->op0;
  fl_lock *lk = op == FL_OP_OBTAIN || op == FL_OP_AWAIT || op == FL_OP_CALL
                    ? NULL : lua_touserdata(L, FAN_LOCK);
  fl_done(L, f->g, lk, op, FAN_KEY(f), FAN_KEYLEN(f), f->start, r, f->poolidx);
  fl_fan_release(f);
  if (op == FL_OP_RELEASE || op == FL_OP_CLOSE) fl_notify(L, FAN_LOCK);
  return op == FL_OP_CLOSE ? 0 : r;
}

static int fan_loop(lua_State *L, fl_fan *f) {
  for (;;) {
    int r;
    drive(L, f, fan_k);
    /* a fan on the C stack must not be left by a yield: plain pcall */
    if (f->ops->recover && f->ops->recover(L, f) &&
        recovered(L, f, f->onstack ? lua_pcall(L, 0, 1, 0)
                                   : lua_pcallk(L, 0, 1, 0, (lua_KContext)f, recover_k)))
      continue;
    /* a fan on the C stack has no __gc: a verdict or log that raises (out
       of memory) would keep its requests.  They go back first; their
       messages stay readable until a request of the pool starts again */
    if (f->onstack) fl_fan_end_legs(f);
    if ((r = f->ops->verdict(L, f)) >= 0) return fan_done(L, f, r);
  }
}

static int recover_k(lua_State *L, int status, lua_KContext ctx) {
  fl_fan *f = (fl_fan *)ctx;
  int r;
  if (!recovered(L, f, status) && (r = f->ops->verdict(L, f)) >= 0) return fan_done(L, f, r);
  return fan_loop(L, f);
}

static int fan_k(lua_State *L, int status, lua_KContext ctx) {
  fl_fan *f = (fl_fan *)ctx;
  guard_off(L, status); /* back from a wait that may have pushed one */
  if (status != LUA_OK && status != LUA_YIELD) {
    const char *m = lua_tostring(L, -1);
    fail_running(f, m ? m : "error");
    lua_pop(L, 1);
  }
  return fan_loop(L, f);
}

/* ---- the requests ---------------------------------------------------------- */

/* pool:obtain(key, ms) for the new lock lk at FAN_LOCK; stack: 1 pool,
   2 key, 3 ms */
int fl_drive_obtain(lua_State *L, fl_lock *lk, lua_Integer ms) {
  fl_fan_room room;
  fl_fan *f = fl_fan_new(L, lk->pool, FL_OP_OBTAIN, 1, lk->key, lk->keylen, &room);
  f->keyat = (unsigned)lk->prefixlen;
  f->token = lk->token;
  f->ms = ms;
  if (lk->mode) f->mode = lk;
  fl_fan_start(f);
  return fan_loop(L, f);
}

/*
 * pool:await(key, seconds, limit) -> true (woken) | false (timed out) |
 * nil, msg.  Redis times BLPOP out only as often as its event loop ticks
 * (every 100 ms at the default hz 10), so the server's timeout cannot be
 * trusted to end a wait on time: 'limit' (seconds from now) is enforced here,
 * and a BLPOP still blocked then is abandoned with its connection.
 */
int fl_drive_await(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  size_t keylen, plen = g->o.prefixlen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  lua_Number secs = luaL_checknumber(L, 3);
  lua_Number limit = luaL_optnumber(L, 4, 0);
  char *lkey;
  fl_fan_room room;
  fl_fan *f;
  lua_settop(L, FAN_HOST);
  /* the full lock key, for the cluster slot: kept in a userdata at FAN_LOCK */
  lkey = lua_newuserdatauv(L, plen + keylen + 1, 0);
  memcpy(lkey, g->o.prefix, plen);
  memcpy(lkey + plen, key, keylen);
  f = fl_fan_new(L, g, FL_OP_AWAIT, 1, lkey, plen + keylen, &room);
  f->keyat = (unsigned)plen;
  /* BLPOP 0 would block for ever */
  f->ms = !(secs >= 0.001) ? 1 : secs > 1e9 ? 1000000000000LL : (long long)(secs * 1000.0 + 0.5);
  f->limit = limit > 0 ? fl_now() + limit : 0;
  fl_fan_start(f);
  return fan_loop(L, f);
}

/* lock:release/ttl/refresh/__close; stack: 1 lock (refresh: 2 ms, 3 replace) */
int fl_drive_lock(lua_State *L, int op) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  lua_Integer ms = op == FL_OP_REFRESH ? lua_tointeger(L, 2) : 0;
  int replace = op == FL_OP_REFRESH && lua_toboolean(L, 3);
  fl_fan_room room;
  fl_fan *f;
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 1); /* 4: the pool userdata */
  lua_pushnil(L);             /* FAN_HOST */
  lua_pushvalue(L, 1);        /* FAN_LOCK */
  f = fl_fan_new(L, lk->pool, op, 4, lk->key, lk->keylen, &room);
  f->keyat = (unsigned)lk->prefixlen;
  f->token = lk->token;
  f->ms = ms;
  f->replace = (unsigned char)replace;
  if (lk->mode) f->mode = lk;
  if (op == FL_OP_RELEASE || op == FL_OP_CLOSE) { /* 2: a hand-over's lock, 3: its ms */
    f->hand = luaL_testudata(L, 2, FL_LOCK_MT);
    if (f->hand) {
      f->ms = lua_tointeger(L, 3);
      /* held until the verdict says otherwise: a release abandoned with its
         coroutine leaves the lock to __gc, which gives it back */
      f->hand->held = 1;
    }
  }
  if (op == FL_OP_RELEASE || op == FL_OP_CLOSE) lk->held = 0; /* first */
  fl_fan_start(f);
  return fan_loop(L, f);
}

/* pool:call(words): cmd's words are anchored at FAN_LOCK (a table); or
   pool:call(round): a Sentinel discovery's question (judge: its round,
   anchored at 2, judges the reply) */
int fl_drive_call(lua_State *L, const fl_cmd *cmd, fl_sdisc *judge) {
  fl_pool *g = fl_checkpool(L, 1);
  /* the command word names the event, never the arguments */
  /* always a userdata: its __gc frees a reply a memory error left */
  fl_fan *f = fl_fan_new(L, g, FL_OP_CALL, 1, cmd->argv[0], cmd->argvlen[0], NULL);
  f->call = cmd;
  if (judge) {
    f->judge = fl_sdisc_judge;
    f->judgectx = judge;
  }
  fl_fan_start(f);
  return fan_loop(L, f);
}
