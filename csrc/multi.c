/*
 * Groups: a pool whose locks live on other servers (its nodes).
 *
 *   FL_REDLOCK  N independent masters.  Every request goes to all of them at
 *               once; a lock is obtained when a majority (the quorum) set it
 *               within the validity window (ttl - elapsed - drift, drift =
 *               1% of ttl + 2 ms).  A failed obtain is undone on every node.
 *               release/refresh go to all nodes, ttl is the time a quorum
 *               still holds the lock.
 *   FL_CLUSTER  Redis Cluster.  Every request goes to the node that serves
 *               the lock key's hash slot (slot map from CLUSTER SLOTS, given
 *               by the Lua layer through pool:setslots); MOVED updates that
 *               slot and goes on, ASK sends ASKING + the command once, on the
 *               same connection; TRYAGAIN (a slot migrating) waits a little
 *               and tries again, within the command's timeout.  At most
 *               MAX_HOPS redirects per request: no retry storm.
 *   FL_SENTINEL One node, the master that Sentinel named (the Lua layer
 *               finds it and retargets the node).  A lock's release, ttl or
 *               refresh that fails there calls the pool's recover function
 *               (pool:setrecover: it asks the sentinels again) once, then
 *               tries again: a lock follows a failover by itself.
 *
 * One request is a fan of legs (one per node asked), all in flight at once.
 * fan_drive() steps every leg without blocking and then waits on one
 * socket, through the host's wait function (which may yield: the fan lives
 * in a userdata on the Lua stack, so the continuation finds it) or on all
 * of them with poll(2).  The nodes' connections are ordinary fl_conns.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "fluxalock.h"
#include "net.h"

#define MAX_HOPS 5
#define HOST 5 /* stack slots shared by every group request */
#define LOCK 6
#define FAN 7

enum { LEG_IDLE, LEG_RUN, LEG_PAUSE, LEG_DONE, LEG_ERR, LEG_LATE };

typedef struct leg {
  fl_pool *node; /* borrowed: the group holds the reference */
  fl_conn *c;
  int st, hops, asking, tries, fallbacks;
  double resume;  /* LEG_PAUSE: when to try again */
  double until;   /* TRYAGAIN is retried until then */
  long long n;    /* the integer reply */
  char err[FL_ERRLEN];
} leg;

typedef struct fan {
  fl_pool *g;
  int op, phase, nlegs, hidx;
  int op0;           /* the operation asked for (op becomes RELEASE for an undo) */
  int poolidx;       /* the Pool userdata's stack index (recover fn) */
  int recovered;     /* the recover function was called */
  int undo_errs;     /* a failed Redlock obtain being undone: its errors */
  int unacked;       /* a node set the lock but its replicas did not confirm */
  char undo_err[FL_ERRLEN];
  const char *key, *lkey, *token; /* anchored on the stack */
  size_t keylen, lkeylen;
  long long ms;
  int replace;
  double secs, limit, start;
  leg legs[]; /* nlegs of them: the userdata is sized to fit */
} fan;

static const char *opname(int op) {
  static const char *names[] = {"obtain", "wait", "release", "release", "ttl", "refresh"};
  return names[op];
}

/* ---- legs ------------------------------------------------------------------ */

static void leg_fail_msg(leg *l, const char *msg) {
  size_t n = strlen(msg);
  if (n >= sizeof l->err) n = sizeof l->err - 1;
  memcpy(l->err, msg, n);
  l->err[n] = '\0';
  if (l->c) fl_conn_end(l->c);
  l->c = NULL;
  l->st = LEG_ERR;
}

/* build the command of f->op for l's node and send it */
static void leg_start(fan *f, leg *l) {
  fl_conn *c = fl_pool_conn(l->node);
  const char *comp = NULL;
  size_t complen = 0;
  double extra = 0;
  int op = f->op;
  l->c = c;
  if (!c) {
    leg_fail_msg(l, "fluxalock: out of memory");
    return;
  }
  c->wkey = f; /* a reply for any leg wakes the fan's coroutine */
  if (op == FL_OP_OBTAIN || op == FL_OP_AWAIT || op == FL_OP_RELEASE || op == FL_OP_CLOSE) {
    comp = fl_companion(c, f->key, f->keylen, op == FL_OP_OBTAIN ? "fence" : "wake:",
                        op != FL_OP_OBTAIN, &complen);
    if (!comp) {
      leg_fail_msg(l, "fluxalock: out of memory");
      return;
    }
  }
  switch (op) {
  case FL_OP_OBTAIN:
    snprintf(c->num[0], sizeof c->num[0], "%lld", f->ms);
    fl_cmd_script(&c->cmd, FL_S_OBTAIN, 2);
    fl_cmd_arg(&c->cmd, f->lkey, f->lkeylen);
    fl_cmd_arg(&c->cmd, comp, complen);
    fl_cmd_arg(&c->cmd, f->token, FL_TOKEN_LEN);
    fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
    break;
  case FL_OP_AWAIT:
    snprintf(c->num[0], sizeof c->num[0], "%.3f", f->secs);
    c->cmd.argc = 0;
    c->cmd.script = -1;
    fl_cmd_arg(&c->cmd, "BLPOP", 5);
    fl_cmd_arg(&c->cmd, comp, complen);
    fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
    extra = f->secs;
    break;
  case FL_OP_RELEASE:
  case FL_OP_CLOSE:
    fl_cmd_release(&c->cmd, f->lkey, f->lkeylen, comp, complen, f->token);
    break;
  case FL_OP_TTL:
    fl_cmd_script(&c->cmd, FL_S_TTL, 1);
    fl_cmd_arg(&c->cmd, f->lkey, f->lkeylen);
    fl_cmd_arg(&c->cmd, f->token, FL_TOKEN_LEN);
    break;
  default: /* FL_OP_REFRESH */
    snprintf(c->num[0], sizeof c->num[0], "%lld", f->ms);
    fl_cmd_script(&c->cmd, FL_S_REFRESH, 1);
    fl_cmd_arg(&c->cmd, f->lkey, f->lkeylen);
    fl_cmd_arg(&c->cmd, f->token, FL_TOKEN_LEN);
    fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
    fl_cmd_arg(&c->cmd, f->replace ? "1" : "0", 1);
  }
  c->asking = l->asking;
  l->st = LEG_RUN;
  if (fl_conn_begin(c, opname(op), extra) == FL_ERR) {
    char msg[FL_ERRLEN];
    memcpy(msg, c->err, sizeof msg);
    leg_fail_msg(l, msg);
    return;
  }
  if (op == FL_OP_AWAIT && f->limit > 0) c->limit = f->limit;
  /* not stepped yet: the first step writes (or connects), so the wait
     before it is for writability, never a stale POLLIN */
  c->events = POLLOUT;
}

static int starts(const redisReply *r, const char *p) {
  return r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, p, strlen(p)) == 0;
}

/* "MOVED 3999 127.0.0.1:6381" -> slot, host, port; 0 when malformed */
static int parse_redirect(const char *s, unsigned *slot, char *host, size_t hostcap,
                          int *port) {
  const char *sp = strchr(s, ' '), *addr, *colon;
  char *end;
  unsigned long sl;
  long sl2;
  size_t hl;
  if (!sp) return 0;
  sl = strtoul(sp + 1, &end, 10);
  if (*end != ' ' || sl > 16383) return 0;
  addr = end + 1;
  colon = strrchr(addr, ':');
  if (!colon) return 0;
  hl = (size_t)(colon - addr);
  if (hl >= hostcap) return 0;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  if (!hl) snprintf(host, hostcap, "127.0.0.1"); /* ":port": the same host */
  sl2 = strtol(colon + 1, &end, 10);
  if (*end != '\0' || sl2 < 1 || sl2 > 65535) return 0;
  *port = (int)sl2;
  *slot = (unsigned)sl;
  return 1;
}

/* l's reply has arrived: take the answer, or follow a redirect */
static void leg_reply(fan *f, leg *l) {
  fl_conn *c = l->c;
  redisReply *r = c->reply;
  fl_pool *g = f->g;
  if (g->kind == FL_CLUSTER && (starts(r, "MOVED ") || starts(r, "ASK "))) {
    char host[256], msg[FL_ERRLEN / 2];
    unsigned slot;
    int port, idx, ask = starts(r, "ASK ");
    if (!parse_redirect(r->str, &slot, host, sizeof host, &port)) {
      snprintf(msg, sizeof msg, "fluxalock: %s %s: %s", c->op, l->node->o.where, r->str);
      leg_fail_msg(l, msg);
      return;
    }
    if (++l->hops > MAX_HOPS) {
      snprintf(msg, sizeof msg, "fluxalock: %s %s: more than %d redirects (last: %s)",
               c->op, l->node->o.where, MAX_HOPS, r->str);
      leg_fail_msg(l, msg);
      return;
    }
    fl_conn_end(c);
    if ((idx = fl_group_node(g, host, port)) < 0) {
      leg_fail_msg(l, "fluxalock: out of memory");
      return;
    }
    if (ask) {
      g->asked++;
    } else {
      g->moved++;
      g->slots[slot] = (unsigned short)(idx + 1);
    }
    l->node = g->nodes[idx];
    l->asking = ask;
    leg_start(f, l);
    return;
  }
  if (g->kind == FL_CLUSTER && (starts(r, "TRYAGAIN") || starts(r, "CLUSTERDOWN"))) {
    /* a slot in migration with some keys moved, or a cluster that is
       failing over: a moment later it is done */
    double now = fl_now(), pause = 0.002 * (1 << (l->tries < 5 ? l->tries : 5));
    if (l->until == 0) l->until = now + l->node->o.timeout;
    if (now + pause < l->until) {
      l->tries++;
      fl_conn_end(c);
      l->st = LEG_PAUSE;
      l->resume = now + pause;
      l->c = NULL;
      return;
    }
  }
  if (r->type == REDIS_REPLY_ERROR) {
    char msg[FL_ERRLEN / 2];
    snprintf(msg, sizeof msg, "fluxalock: %s %s: %s", c->op, l->node->o.where,
             r->str ? r->str : "error");
    leg_fail_msg(l, msg);
    return;
  }
  if (f->op == FL_OP_AWAIT) {
    l->n = r->type == REDIS_REPLY_ARRAY;
  } else if (r->type == REDIS_REPLY_INTEGER) {
    l->n = r->integer;
    if (l->n > 0 && (f->op == FL_OP_OBTAIN || f->op == FL_OP_REFRESH) &&
        l->node->o.replicas > 0 && c->acked < l->node->o.replicas) {
      /* written on this master only: a failover could lose it */
      char msg[FL_ERRLEN];
      snprintf(msg, sizeof msg, "fluxalock: %s %s: %d of %d replicas acknowledged the %s",
               c->op, l->node->o.where, (int)(c->acked < 0 ? 0 : c->acked),
               l->node->o.replicas, f->op == FL_OP_OBTAIN ? "lock" : "refresh");
      f->unacked = 1;
      leg_fail_msg(l, msg);
      return;
    }
  } else {
    char msg[FL_ERRLEN / 2];
    fl_conn_disconnect(c); /* not Redis? */
    snprintf(msg, sizeof msg, "fluxalock: %s %s: unexpected reply", c->op, l->node->o.where);
    leg_fail_msg(l, msg);
    return;
  }
  fl_conn_end(c);
  l->c = NULL;
  l->st = LEG_DONE;
}

/* ---- the driver -------------------------------------------------------------- */

/* a cluster node refused or dropped the connection: ask another node,
   which answers MOVED to whoever serves the slot now (a promoted replica);
   twice at most, and never after a timeout (a frozen node would make each
   try cost the whole timeout) */
static int leg_fallback(fan *f, leg *l) {
  fl_pool *g = f->g;
  int i, cur = 0;
  if (g->kind != FL_CLUSTER || g->nnodes < 2 || l->fallbacks >= 2) return 0;
  for (i = 0; i < g->nnodes; i++)
    if (g->nodes[i] == l->node) cur = i;
  fl_conn_end(l->c);
  l->c = NULL;
  l->fallbacks++;
  l->asking = 0;
  l->node = g->nodes[(cur + 1) % g->nnodes];
  leg_start(f, l);
  return 1;
}

static void leg_step(fan *f, leg *l, double now) {
  int st, timedout = 0;
  if (l->st == LEG_PAUSE && now >= l->resume) {
    l->c = NULL;
    leg_start(f, l);
  }
  if (l->st != LEG_RUN) return;
  st = fl_conn_step(l->c);
  if (st == FL_WAIT) {
    now = fl_now();
    if (l->c->limit > 0 && now >= l->c->limit) { /* the wait's hard end */
      /* a BLPOP still blocked holds its link until the server answers */
      if (l->c->link) {
        fl_link_close(l->c->link, "abandoned");
        l->c->link->ever = 0; /* on purpose: no reconnect (stats.c) */
      }
      fl_conn_end(l->c);
      l->c = NULL;
      l->st = LEG_LATE;
      return;
    }
    if (now >= l->c->deadline) {
      st = fl_conn_timeout(l->c);
      timedout = 1;
    }
  }
  if (st == FL_DONE) {
    leg_reply(f, l);
  } else if (st == FL_ERR) {
    char msg[FL_ERRLEN];
    memcpy(msg, l->c->err, sizeof msg);
    if (!timedout && leg_fallback(f, l)) return;
    leg_fail_msg(l, msg);
  }
}

static void fail_running(fan *f, const char *why) {
  int i;
  char msg[FL_ERRLEN / 2];
  for (i = 0; i < f->nlegs; i++) {
    leg *l = &f->legs[i];
    if (l->st != LEG_RUN && l->st != LEG_PAUSE) continue;
    snprintf(msg, sizeof msg, "fluxalock: %s %s: host wait: %s", opname(f->op),
             l->node->o.where, why);
    if (l->c) fl_conn_detach(l->c);
    leg_fail_msg(l, msg);
  }
}

/* Redlock: once a majority has obtained, released or refreshed, the legs
   still running cannot change the answer: they are abandoned (their
   connections dropped), so one slow node does not eat into the validity */
static void settle_early(fan *f) {
  int i, ok = 0, running = 0;
  if (f->g->kind != FL_REDLOCK || f->op == FL_OP_TTL || f->op == FL_OP_AWAIT) return;
  for (i = 0; i < f->nlegs; i++) {
    if (f->legs[i].st == LEG_DONE && f->legs[i].n > 0) ok++;
    if (f->legs[i].st == LEG_RUN || f->legs[i].st == LEG_PAUSE) running++;
  }
  if (!running || ok < f->nlegs / 2 + 1) return;
  for (i = 0; i < f->nlegs; i++) {
    leg *l = &f->legs[i];
    char msg[FL_ERRLEN];
    if (l->st != LEG_RUN && l->st != LEG_PAUSE) continue;
    if (l->c) {
      /* its command still goes out (a release the majority did not need
         must still reach its node), its late reply is dropped */
      if (l->c->link) fl_link_send(l->c->link);
      fl_conn_detach(l->c);
    }
    snprintf(msg, sizeof msg, "fluxalock: %s %s: not awaited (a majority answered)",
             opname(f->op), l->node->o.where);
    leg_fail_msg(l, msg);
  }
}

/* deliver the wake-ups the legs' links collected (other coroutines' replies) */
static void fan_wakes(lua_State *L, fan *f) {
  int i;
  if (!f->hidx) return;
  for (i = 0; i < f->g->nnodes; i++) fl_wake_flush(L, f->g->nodes[i], f->hidx);
}

/* An epoll descriptor that watches several legs' sockets, owned by a
   to-be-closed userdata on the fan's stack: closed by the next wait, by
   the request's return, or when the coroutine is closed (or collected) in
   the wait, each time after the host stopped watching it */
#define WATCH_MT "fluxalock.fanwatch"

static int watch_close(lua_State *L) { /* __close and __gc: never raises */
  int *fd = lua_touserdata(L, 1);
  if (fd && *fd >= 0) close(*fd);
  if (fd) *fd = -1;
  return 0;
}

/* one wait of the fan under a host: on the sockets of the legs whose links
   it may read (it is their reader), through one descriptor (epoll) when
   there are several: a host waits on one, and with the first node frozen
   the others' replies lay unread for the whole timeout.  A leg whose link
   another coroutine reads wakes the fan through that reader (the wait is
   keyed on the fan); with nothing to watch the fan parks on itself */
static int fan_wait(lua_State *L, fan *f, double now, double left, lua_KFunction k) {
  int i, n = 0, park = f->g->has_park, wfd = -1;
  fl_conn *watch[FL_MAXNODES];
  double t = left;
  if (luaL_testudata(L, -1, WATCH_MT)) lua_pop(L, 1); /* the last wait's: closed */
  for (i = 0; i < f->nlegs; i++) {
    leg *l = &f->legs[i];
    fl_link *lk;
    if (l->st != LEG_RUN) continue;
    lk = l->c->link;
    if (fl_conn_fd(l->c) >= 0 && n < FL_MAXNODES &&
        (!l->c->pool->has_park || fl_conn_claim(l->c, now, left))) {
      watch[n++] = l->c;
      continue;
    }
    fl_conn_unclaim(l->c);
    if (lk && lk->reader && lk->reader != l->c && lk->rdl + 0.05 - now < t)
      t = lk->rdl + 0.05 - now; /* a reader gone: look again then */
  }
  fan_wakes(L, f);
  if (n > 1) {
    int *box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = -1;
    if (luaL_newmetatable(L, WATCH_MT)) {
      lua_pushcfunction(L, watch_close);
      lua_setfield(L, -2, "__close");
      lua_pushcfunction(L, watch_close);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_toclose(L, -1);
    if ((*box = wfd = epoll_create1(EPOLL_CLOEXEC)) >= 0) {
      for (i = 0; i < n && wfd >= 0; i++) {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = (watch[i]->events & POLLOUT ? EPOLLOUT : 0u) |
                    (watch[i]->events & POLLIN ? EPOLLIN : 0u);
        ev.data.fd = fl_conn_fd(watch[i]);
        if (epoll_ctl(wfd, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) wfd = -1;
      }
    } /* else (no descriptor left): the first leg's socket alone, as before */
  }
  if (n) {
    lua_getfield(L, f->hidx, "wait");
    lua_pushinteger(L, wfd >= 0 ? wfd : fl_conn_fd(watch[0]));
    lua_pushstring(L, wfd < 0 && watch[0]->events == POLLOUT ? "w" : "r");
    lua_pushnumber(L, t > 0.001 ? t : 0.001);
    if (!park) return lua_pcallk(L, 3, 0, 0, (lua_KContext)f, k);
    lua_pushlightuserdata(L, f); /* a reader of another leg's link unparks it */
    return lua_pcallk(L, 4, 0, 0, (lua_KContext)f, k);
  }
  if (lua_getfield(L, f->hidx, "park") != LUA_TFUNCTION) {
    /* a wait-only host and nothing to wait on (all legs pausing): short */
    lua_pop(L, 1);
    poll(NULL, 0, (int)(left * 1000.0) + 1);
    return LUA_OK;
  }
  lua_pushlightuserdata(L, f);
  lua_pushnumber(L, t > 0.001 ? t : 0.001);
  return lua_pcallk(L, 2, 0, 0, (lua_KContext)f, k);
}

/* run every leg to its end; 0 when done (may yield through the host) */
static int fan_drive(lua_State *L, fan *f, lua_KFunction k) {
  int host = f->hidx && lua_type(L, f->hidx) == LUA_TTABLE;
  for (;;) {
    struct pollfd pfd[FL_MAXNODES];
    int i, np = 0, active = 0;
    double now = fl_now(), until = now + 3600;
    for (i = 0; i < f->nlegs; i++) leg_step(f, &f->legs[i], now);
    settle_early(f);
    now = fl_now();
    for (i = 0; i < f->nlegs; i++) {
      leg *l = &f->legs[i];
      if (l->st == LEG_RUN) {
        double d = l->c->deadline;
        if (l->c->limit > 0 && l->c->limit < d) d = l->c->limit;
        if (d < until) until = d;
        if (fl_conn_fd(l->c) >= 0 && np < FL_MAXNODES) {
          pfd[np].fd = fl_conn_fd(l->c);
          pfd[np].events = (short)l->c->events;
          pfd[np].revents = 0;
          np++;
        }
        active++;
      } else if (l->st == LEG_PAUSE) {
        if (l->resume < until) until = l->resume;
        active++;
      }
    }
    if (!active) {
      if (host) fan_wakes(L, f);
      return 0;
    }
    if (until < now) until = now;
    if (host) {
      int st = fan_wait(L, f, now, until - now, k);
      if (st != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        fail_running(f, m ? m : "error");
        lua_pop(L, 1);
        fan_wakes(L, f);
        return 0;
      }
    } else {
      int ms = (int)((until - now) * 1000.0) + 1;
      if (poll(pfd, (nfds_t)np, ms) < 0 && errno != EINTR) fail_running(f, strerror(errno));
    }
  }
}

/* ---- verdicts ---------------------------------------------------------------- */

static int quorum(const fan *f) { return f->nlegs / 2 + 1; }

static void count(const fan *f, int *ok, int *errs, const char **first) {
  int i;
  *ok = *errs = 0;
  *first = NULL;
  for (i = 0; i < f->nlegs; i++) {
    const leg *l = &f->legs[i];
    if (l->st == LEG_ERR) {
      (*errs)++;
      if (!*first) *first = l->err;
    } else if (l->st == LEG_DONE && l->n > 0) {
      (*ok)++;
    }
  }
}

/* nil, message: a single leg's own, or the quorum's story */
static int push_failure(lua_State *L, const fan *f, int errs, const char *first) {
  lua_pushnil(L);
  if (f->nlegs == 1) {
    lua_pushstring(L, first);
  } else {
    lua_pushfstring(L, "fluxalock: %s %s: %d of %d nodes failed, %d needed (%s)",
                    opname(f->op), f->g->o.where, errs, f->nlegs, quorum(f), first);
  }
  return 2;
}

static void restart(fan *f, int op) {
  int i;
  f->op = op;
  f->phase++;
  for (i = 0; i < f->nlegs; i++) {
    leg *l = &f->legs[i];
    if (f->g->kind == FL_REDLOCK) l->node = f->g->nodes[i];
    l->hops = l->asking = l->tries = l->fallbacks = 0;
    l->until = 0;
    l->st = LEG_IDLE;
    l->c = NULL;
    leg_start(f, l);
  }
}

/* the answer of a finished fan; -1 when a second round was started */
static int verdict(lua_State *L, fan *f) {
  fl_lock *lk = lua_touserdata(L, LOCK);
  int ok, errs, q = quorum(f), i;
  const char *first;
  double elapsed_ms = (fl_now() - f->start) * 1000.0;
  double drift = f->g->kind == FL_REDLOCK ? (double)f->ms * 0.01 + 2 : 0;
  count(f, &ok, &errs, &first);
  switch (f->op) {
  case FL_OP_OBTAIN:
    if (ok >= q && (f->g->kind != FL_REDLOCK || (double)f->ms - elapsed_ms - drift > 0)) {
      lk->held = 1;
      lk->fence = f->g->kind != FL_REDLOCK ? f->legs[0].n : 0;
      lua_settop(L, LOCK);
      return 1;
    }
    if (f->g->kind == FL_REDLOCK || f->unacked) {
      /* undo it everywhere (a node that timed out may have set it too);
         the obtain's own verdict is kept in the lock's fence meanwhile */
      f->undo_errs = errs > f->nlegs - q || f->nlegs == 1 ? errs : 0;
      memcpy(f->undo_err, first ? first : "", first ? sizeof f->undo_err : 1);
      restart(f, FL_OP_RELEASE);
      return -1;
    }
    if (errs) return push_failure(L, f, errs, first);
    lua_pushboolean(L, 0);
    return 1;
  case FL_OP_RELEASE:
    if (f->phase > 0) { /* the undo of a failed Redlock obtain */
      if (f->undo_errs) { /* a quorum was out of reach: say why */
        f->op = FL_OP_OBTAIN;
        return push_failure(L, f, f->undo_errs, f->undo_err);
      }
      lua_pushboolean(L, 0);
      return 1;
    }
    /* fallthrough */
  case FL_OP_CLOSE:
    if (ok >= q) {
      lua_pushboolean(L, 1);
      return 1;
    }
    if (ok + errs >= q) { /* unknown: the caller may try again */
      lk->held = 1;
      return push_failure(L, f, errs, first);
    }
    lua_pushboolean(L, 0);
    return 1;
  case FL_OP_TTL: {
    long long v[FL_MAXNODES];
    int h = 0;
    for (i = 0; i < f->nlegs; i++)
      if (f->legs[i].st == LEG_DONE && f->legs[i].n >= 0) v[h++] = f->legs[i].n;
    if (h >= q) { /* the time a quorum still holds it: q-th largest */
      int a, b;
      for (a = 0; a < h; a++)
        for (b = a + 1; b < h; b++)
          if (v[b] > v[a]) { long long t = v[a]; v[a] = v[b]; v[b] = t; }
      lua_pushnumber(L, (lua_Number)v[q - 1] / 1000.0);
      return 1;
    }
    if (h + errs >= q) return push_failure(L, f, errs, first);
    lk->held = 0;
    lua_pushnumber(L, 0);
    return 1;
  }
  case FL_OP_REFRESH:
    if (ok >= q) {
      if (f->g->kind == FL_REDLOCK && (double)f->ms - elapsed_ms - drift <= 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "fluxalock: refresh %s: took longer than the new ttl allows",
                        f->g->o.where);
        return 2;
      }
      lua_pushboolean(L, 1);
      return 1;
    }
    if (ok + errs >= q) return push_failure(L, f, errs, first);
    lk->held = 0;
    lua_pushboolean(L, 0);
    return 1;
  default: { /* FL_OP_AWAIT: one leg */
    leg *l = &f->legs[0];
    if (l->st == LEG_ERR) {
      /* Redlock: one node's wake-up list is only a hint; a node down must
         not end the wait (the backoff retries) */
      if (f->g->kind == FL_REDLOCK) {
        lua_pushboolean(L, 0);
        return 1;
      }
      return push_failure(L, f, 1, l->err);
    }
    lua_pushboolean(L, l->st == LEG_DONE && l->n);
    return 1;
  }
  }
}

static int fan_k(lua_State *L, int status, lua_KContext ctx);

/* Sentinel: a lock's request failed (master gone, or now a replica that
   refused the write): has the pool a recover function to call, once? */
static int wants_recover(lua_State *L, fan *f) {
  int has;
  if (f->g->kind != FL_SENTINEL || f->recovered || f->legs[0].st != LEG_ERR) return 0;
  if (f->op != FL_OP_RELEASE && f->op != FL_OP_CLOSE && f->op != FL_OP_TTL &&
      f->op != FL_OP_REFRESH)
    return 0; /* obtain and wait: the Lua layer looks itself */
  f->recovered = 1;
  has = lua_getiuservalue(L, f->poolidx, 2) == LUA_TFUNCTION;
  if (!has) lua_pop(L, 1);
  return has;
}

/* after recover() returned (or raised): 1 when the request was started
   again on the pool's new target */
static int recovered(lua_State *L, fan *f, int status) {
  int ok = (status == LUA_OK || status == LUA_YIELD) && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!ok) return 0;
  if (f->op == FL_OP_CLOSE || f->op == FL_OP_RELEASE) {
    fl_lock *lk = lua_touserdata(L, LOCK);
    lk->held = 0; /* as before the first try */
  }
  restart(f, f->op);
  f->phase = 0;
  return 1;
}

static int recover_k(lua_State *L, int status, lua_KContext ctx);

/* the verdict's r results: counted and logged once per operation (stats.c) */
static int fan_done(lua_State *L, fan *f, int r) {
  int op = f->op0; /* f may be unanchored now (an obtain's verdict trims
                      the stack to the lock): read it before fl_done */
  fl_lock *lk = op == FL_OP_OBTAIN || op == FL_OP_AWAIT ? NULL : lua_touserdata(L, LOCK);
  fl_done(L, f->g, lk, op, f->key, f->keylen, f->start, r, f->poolidx);
  if (op == FL_OP_RELEASE || op == FL_OP_CLOSE) fl_notify(L, LOCK);
  return op == FL_OP_CLOSE ? 0 : r;
}

static int fan_loop(lua_State *L, fan *f) {
  for (;;) {
    int r;
    fan_drive(L, f, fan_k);
    if (wants_recover(L, f) &&
        recovered(L, f, lua_pcallk(L, 0, 1, 0, (lua_KContext)f, recover_k)))
      continue;
    if ((r = verdict(L, f)) >= 0) return fan_done(L, f, r);
  }
}

static int recover_k(lua_State *L, int status, lua_KContext ctx) {
  fan *f = (fan *)ctx;
  int r;
  if (!recovered(L, f, status) && (r = verdict(L, f)) >= 0) return fan_done(L, f, r);
  return fan_loop(L, f);
}

static int fan_k(lua_State *L, int status, lua_KContext ctx) {
  fan *f = (fan *)ctx;
  if (status != LUA_OK && status != LUA_YIELD) {
    const char *m = lua_tostring(L, -1);
    fail_running(f, m ? m : "error");
    lua_pop(L, 1);
  }
  return fan_loop(L, f);
}

/* the fan userdata at FAN; the stack holds LOCK values already (HOST gets
   the host's wait function, from the Pool userdata at pooludx) */
static fan *fan_new(lua_State *L, fl_pool *g, int op, int pooludx) {
  fan *f;
  int i, n = g->kind == FL_REDLOCK && op != FL_OP_AWAIT ? g->nnodes : 1;
  size_t size = offsetof(fan, legs) + (size_t)n * sizeof(leg);
  lua_settop(L, LOCK);
  if (g->has_host) {
    lua_getiuservalue(L, pooludx, 1);
    lua_replace(L, HOST);
  }
  f = lua_newuserdatauv(L, size, 0); /* FAN */
  memset(f, 0, size);
  f->g = g;
  f->op = f->op0 = op;
  f->hidx = g->has_host ? HOST : 0;
  f->start = fl_now();
  f->nlegs = n;
  f->poolidx = pooludx;
  if (g->kind == FL_SENTINEL) f->legs[0].node = g->nodes[0];
  if (g->kind == FL_REDLOCK && op != FL_OP_AWAIT) /* else: set by the caller */
    for (i = 0; i < n; i++) f->legs[i].node = g->nodes[i];
  return f;
}

static void fan_start(fan *f) {
  int i;
  if (f->g->kind == FL_CLUSTER) f->legs[0].node = fl_group_slot_node(f->g, f->lkey, f->lkeylen);
  for (i = 0; i < f->nlegs; i++) leg_start(f, &f->legs[i]);
}

/* group pool:obtain(key, ms); stack: 1 pool, 2 key, 3 ms */
int fl_multi_obtain(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  size_t keylen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  lua_Integer ms = luaL_checkinteger(L, 3);
  fl_lock *lk;
  fan *f;
  lua_settop(L, HOST);
  lk = fl_lock_new(L, 1, g, key, keylen); /* at LOCK */
  if (fl_token(lk->token) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, "fluxalock: obtain: no random bytes from the kernel");
    return 2;
  }
  f = fan_new(L, g, FL_OP_OBTAIN, 1);
  f->key = key;
  f->keylen = keylen;
  f->lkey = lk->key;
  f->lkeylen = lk->keylen;
  f->token = lk->token;
  f->ms = ms;
  fan_start(f);
  return fan_loop(L, f);
}

/* group pool:await(key, secs, limit) */
int fl_multi_await(lua_State *L) {
  fl_pool *g = fl_checkpool(L, 1);
  size_t keylen, plen = g->o.prefixlen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  lua_Number secs = luaL_checknumber(L, 3);
  lua_Number limit = luaL_optnumber(L, 4, 0);
  char *lkey;
  fan *f;
  int i;
  lua_settop(L, HOST);
  /* the full lock key, for the cluster slot: kept in a userdata at LOCK */
  lkey = lua_newuserdatauv(L, plen + keylen + 1, 0);
  f = fan_new(L, g, FL_OP_AWAIT, 1);
  memcpy(lkey, g->o.prefix, plen);
  memcpy(lkey + plen, key, keylen);
  f->key = key;
  f->keylen = keylen;
  f->lkey = lkey;
  f->lkeylen = plen + keylen;
  f->secs = secs < 0.001 ? 0.001 : secs;
  f->limit = limit > 0 ? fl_now() + limit : 0;
  if (g->kind == FL_REDLOCK) {
    /* wait on a node that answered lately (an open connection), in turn */
    int pick = -1;
    for (i = 0; i < g->nnodes && pick < 0; i++) {
      int j = (int)((g->rotate + (unsigned long)i) % (unsigned long)g->nnodes), k;
      for (k = 0; k < g->nodes[j]->nlinks; k++)
        if (g->nodes[j]->links[k]->state == FL_LK_READY && fl_link_idle(g->nodes[j]->links[k]))
          pick = j;
    }
    g->rotate++;
    f->legs[0].node = g->nodes[pick < 0 ? 0 : pick];
  }
  fan_start(f);
  return fan_loop(L, f);
}

/* lock:release/ttl/refresh/__close on a group; stack: 1 lock (refresh: 2
   ms, 3 replace) */
int fl_multi_lock(lua_State *L, int op) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  lua_Integer ms = op == FL_OP_REFRESH ? lua_tointeger(L, 2) : 0;
  int replace = op == FL_OP_REFRESH && lua_toboolean(L, 3);
  fan *f;
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 1); /* 4: the pool userdata */
  lua_pushnil(L);             /* HOST */
  lua_pushvalue(L, 1);        /* LOCK */
  f = fan_new(L, lk->pool, op, 4);
  f->key = lk->key + lk->prefixlen;
  f->keylen = lk->keylen - lk->prefixlen;
  f->lkey = lk->key;
  f->lkeylen = lk->keylen;
  f->token = lk->token;
  f->ms = ms;
  f->replace = replace;
  if (op == FL_OP_RELEASE || op == FL_OP_CLOSE) lk->held = 0; /* first */
  fan_start(f);
  return fan_loop(L, f);
}

/* __gc of a held lock of a group: defer its release on its nodes */
void fl_multi_gc(fl_lock *lk) {
  fl_pool *g = lk->pool;
  int i;
  lk->held = 0;
  for (i = 0; i < g->nnodes; i++) {
    fl_pool *n = g->nodes[i];
    size_t wakelen;
    char *wake;
    if (g->kind == FL_CLUSTER && n != fl_group_slot_node(g, lk->key, lk->keylen)) continue;
    wake = fl_companion_dup(&n->o, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen,
                            "wake:", &wakelen);
    if (!wake) continue;
    fl_pool_defer(n, lk->key, lk->keylen, wake, wakelen, lk->token);
    free(wake);
    if (!g->has_host) fl_pool_flush(n);
  }
}
