/*
 * Requests (fl_conn) on shared links (fl_link): hiredis async.c's habit.
 *
 * A link is one socket (a transport of net.h) and a FIFO of entries, one
 * per request queued on it; replies are matched to entries in order.  A
 * request whose caller gives up (timed out, abandoned) leaves a ghost entry
 * that keeps its place: its late replies are dropped when they come, so one
 * slow call costs neither the socket nor the requests behind it.  A link
 * that fails (I/O error, EOF, protocol error) fails every request on it;
 * the next request reconnects.
 *
 * fl_conn_step() never waits: it moves the request's link on (connect,
 * write, read and dispatch) and answers FL_DONE, FL_ERR, or FL_WAIT with
 * the events its link needs.  fl_run() is the one place that waits: poll(2)
 * in a plain script, or the host: one coroutine per link (its reader) waits
 * on the socket through host.wait, the others park (host.park) and are
 * unparked when the reader has dispatched their replies (conn_io.c has the
 * byte-level half).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "net.h"

double fl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void drop_reply(fl_conn *c) {
  if (c->reply) freeReplyObject(c->reply);
  c->reply = NULL;
}

void fl_conn_free(fl_conn *c) {
  if (!c) return;
  drop_reply(c);
  free(c->scratch);
  free(c->args);
  free(c);
}

/* ---- wake-ups ---------------------------------------------------------------- */

/* remember to unpark key's coroutine (at the next fl_wake_flush) */
void fl_wake(fl_pool *p, void *key) {
  if (!p->has_park || !key) return;
  if (p->nwakes == p->wakecap) {
    int cap = p->wakecap ? 2 * p->wakecap : 16;
    void **a = realloc(p->wakes, (size_t)cap * sizeof *a);
    if (!a) return; /* the parked one wakes at its own timeout */
    p->wakes = a;
    p->wakecap = cap;
  }
  p->wakes[p->nwakes++] = key;
}

/* call host.unpark(key) for every wake-up collected; never yields */
void fl_wake_flush(lua_State *L, fl_pool *p, int hostidx) {
  int i, n = p->nwakes;
  if (!n) return;
  p->nwakes = 0;
  if (!L || !hostidx || lua_type(L, hostidx) != LUA_TTABLE) return;
  for (i = 0; i < n; i++) {
    if (lua_getfield(L, hostidx, "unpark") != LUA_TFUNCTION) {
      lua_pop(L, 1);
      return;
    }
    lua_pushlightuserdata(L, p->wakes[i]);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1); /* best effort */
  }
}

/* ---- the reader role ----------------------------------------------------------- */

#define GRACE 0.05 /* a reader not back this long after its wait: abandoned */

/* may c's coroutine wait on the link's socket?  Else it parks */
int fl_conn_claim(fl_conn *c, double now, double left) {
  fl_link *k = c->link;
  if (!k) return 1;
  if (k->reader && k->reader != c && now < k->rdl + GRACE) return 0;
  k->reader = c;
  k->rdl = now + left;
  return 1;
}

/* c no longer waits on its link: the next live request takes the role.
   Also when c never held it: a request woken to become the reader may find
   its reply already in and end without claiming, and the ones parked behind
   it would then sleep until their own timeout with nobody reading */
void fl_conn_unclaim(fl_conn *c) {
  fl_link *k = c->link;
  int i;
  if (!k || (k->reader && k->reader != c)) return;
  k->reader = NULL;
  fl_link_reap(k);
  for (i = 0; i < k->qlen; i++) {
    fl_conn *o = k->q[(k->qhead + i) % k->qcap].c;
    if (o && o != c && o->state == FL_RQ_QUEUED) {
      fl_wake(k->pool, o->wkey);
      return;
    }
  }
}

/* ---- failures ------------------------------------------------------------------ */

/* "fluxalock: <op> <where>: <why>" into c->err; c fails */
void fl_conn_fail(fl_conn *c, const char *op, const char *fmt, ...) {
  char why[FL_ERRLEN / 2];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  snprintf(c->err, sizeof c->err, "fluxalock: %s %s: %s", op, c->pool->o.where, why);
  drop_reply(c);
  c->state = FL_RQ_ERR;
}

/* c gives up on its entry: a ghost keeps the place of its replies */
void fl_conn_detach(fl_conn *c) {
  fl_link *k = c->link;
  int i;
  if (!k || c->state != FL_RQ_QUEUED) return;
  for (i = 0; i < k->qlen; i++) {
    fl_entry *e = &k->q[(k->qhead + i) % k->qcap];
    if (e->c == c) {
      e->c = NULL;
      e->ghost = c->expect;
    }
  }
  if (k->reader == c) fl_conn_unclaim(c);
  c->state = FL_RQ_ERR;
}

/* the request ran out of time */
int fl_conn_timeout(fl_conn *c) {
  fl_link *k = c->link;
  int connecting = k && k->state == FL_LK_CONNECTING;
  double now = fl_now();
  fl_conn_detach(c);
  fl_conn_fail(c, connecting ? "connect" : c->op, "timed out");
  /* nothing came back for a whole timeout, and the link is not busy with
     a request still within its own time (a WAIT for replicas, a BLPOP): the
     server is gone or frozen, and what is queued would wait for nothing */
  if (k && k->qlen > 0 && now - k->progress >= c->pool->o.timeout) {
    const fl_conn *h = k->q[k->qhead].c;
    if (!h || now >= h->deadline) fl_link_close(k, "timed out");
  }
  return FL_ERR;
}

/* drop c's link (a reply that makes no sense: not Redis?) */
void fl_conn_disconnect(fl_conn *c) {
  if (c->link && c->link->state != FL_LK_CLOSED) fl_link_close(c->link, "connection dropped");
}

/* ---- requests -------------------------------------------------------------------- */

static int append_cmd(fl_link *k, fl_cmd *cmd) {
  return fl_link_out(k, cmd->argc, cmd->argv, cmd->argvlen);
}

/* the EVAL form of an EVALSHA command, for NOSCRIPT and deferred releases */
static int append_eval(fl_link *k, fl_cmd *cmd) {
  fl_cmd e = *cmd;
  e.argv[0] = "EVAL";
  e.argvlen[0] = 4;
  e.argv[1] = fl_scripts[cmd->script].body;
  e.argvlen[1] = strlen(fl_scripts[cmd->script].body);
  return append_cmd(k, &e);
}

/* queue the releases that __gc deferred in front of this request */
static int append_pending(fl_conn *c) {
  fl_pool *p = c->pool;
  while (p->pending) {
    fl_pending *d = p->pending;
    fl_cmd cmd;
    fl_cmd_release(&cmd, d->key, d->keylen, d->wake, d->wakelen, d->token);
    if (append_eval(c->link, &cmd) != 0) return -1;
    p->pending = d->next;
    free(d);
    c->pending++;
  }
  return 0;
}

static int append_asking(fl_conn *c) {
  const char *a[1] = {"ASKING"};
  size_t al[1] = {6};
  c->pending++; /* its +OK is skipped like a deferred release's */
  return fl_link_out(c->link, 1, a, al);
}

static int append_wait(fl_conn *c) {
  const char *a[3] = {"WAIT", c->waitarg[0], c->waitarg[1]};
  size_t al[3];
  al[0] = 4;
  al[1] = strlen(c->waitarg[0]);
  al[2] = strlen(c->waitarg[1]);
  return fl_link_out(c->link, 3, a, al);
}

/* the commands of c, appended to its link's output */
static int append_request(fl_conn *c) {
  const fl_opts *o = &c->pool->o;
  if (append_pending(c) != 0) return -1;
  if (c->asking && append_asking(c) != 0) return -1;
  if (append_cmd(c->link, &c->cmd) != 0) return -1;
  if (c->post) {
    snprintf(c->waitarg[0], sizeof c->waitarg[0], "%d", o->replicas);
    snprintf(c->waitarg[1], sizeof c->waitarg[1], "%lld",
             (long long)(o->replica_timeout * 1000.0 + 0.5));
    if (append_wait(c) != 0) return -1;
  }
  return 0;
}

/* c->cmd's arguments copied into c: a NOSCRIPT retry re-encodes them
   later, when the caller's memory (its Lock, its stack) may be gone with an
   abandoned coroutine.  The script words (EVALSHA, sha, nkeys) are static */
static int own_args(fl_conn *c) {
  fl_cmd *cmd = &c->cmd;
  int i, first = cmd->script >= 0 ? 3 : 0;
  size_t need = 0, at = 0;
  for (i = first; i < cmd->argc; i++) need += cmd->argvlen[i];
  if (need > c->argcap) {
    char *b = realloc(c->args, need);
    if (!b) return -1;
    c->args = b;
    c->argcap = need;
  }
  for (i = first; i < cmd->argc; i++) {
    if (cmd->argvlen[i]) memcpy(c->args + at, cmd->argv[i], cmd->argvlen[i]);
    cmd->argv[i] = c->args + at;
    at += cmd->argvlen[i];
  }
  return 0;
}

/* FNV-1a of the command's first key (a script's KEYS[1], else its first
   argument): the link it goes on (fl_link_for) */
static unsigned key_hash(const fl_cmd *cmd) {
  int i = cmd->script >= 0 ? 3 : 1;
  unsigned h = 2166136261u;
  size_t j;
  if (i >= cmd->argc) return 0;
  for (j = 0; j < cmd->argvlen[i]; j++) h = (h ^ (unsigned char)cmd->argv[i][j]) * 16777619u;
  return h;
}

/* start c->cmd; extra: seconds the command itself may block (BLPOP) */
int fl_conn_begin(fl_conn *c, const char *op, double extra) {
  double now = fl_now();
  const fl_opts *o = &c->pool->o;
  fl_link *k;
  /* a lock written (obtain, refresh) is confirmed by WAIT when asked to:
     pipelined on the same connection, as WAIT counts this client's writes */
  c->post = o->replicas > 0 &&
            (c->cmd.script == FL_S_OBTAIN || c->cmd.script == FL_S_REFRESH);
  c->acked = 0;
  if (c->post) extra += o->replica_timeout;
  c->op = op;
  c->t0 = now; /* stats.c: the log's 'seconds' */
  c->busy = 1;
  c->retried = c->pending = 0;
  c->limit = 0;
  c->extra = extra;
  c->state = FL_RQ_IDLE;
  if (!c->wkey) c->wkey = c;
  drop_reply(c);
  if (own_args(c) != 0) {
    c->link = NULL;
    fl_conn_fail(c, op, "out of memory");
    return FL_ERR;
  }
  c->h = key_hash(&c->cmd);
  if (!(k = fl_link_for(c->pool, c->h))) {
    c->link = NULL;
    fl_conn_fail(c, "connect", "out of memory");
    return FL_ERR;
  }
  c->link = k;
  if (k->state == FL_LK_CLOSED && fl_link_connect(k, now) != 0) {
    fl_conn_fail(c, "connect", "%s", k->out ? "out of memory" : "cannot connect");
    return FL_ERR;
  }
  c->connwait = k->state == FL_LK_CONNECTING;
  c->deadline = now + (c->connwait ? o->connect_timeout : o->timeout + extra);
  if (append_request(c) != 0 || fl_link_push(k, c) != 0) {
    /* what was appended is sent unanswered: the link cannot be trusted */
    fl_link_close(k, "out of memory");
    fl_conn_fail(c, op, "out of memory");
    return FL_ERR;
  }
  c->expect = c->pending + 1 + c->post;
  c->state = FL_RQ_QUEUED;
  return FL_WAIT;
}

static int is_error(const redisReply *r, const char *prefix) {
  return r->type == REDIS_REPLY_ERROR && r->str &&
         strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* NOSCRIPT: the server lost its script cache (SCRIPT FLUSH, restart): send
   the body once, at the link's tail; EVAL caches it again */
static int retry_eval(fl_conn *c) {
  const fl_opts *o = &c->pool->o;
  c->retried = 1;
  /* a round trip of its own, after the WAIT that may follow the failed
     EVALSHA (it waits for nothing, and may take all of replica_timeout) */
  c->deadline = fl_now() + o->timeout + c->extra + (c->post ? o->replica_timeout : 0);
  c->pending = 0;
  if (c->asking && append_asking(c) != 0) return -1;
  if (append_eval(c->link, &c->cmd) != 0) return -1;
  if (c->post && append_wait(c) != 0) return -1;
  c->expect = c->pending + 1 + c->post;
  return 0;
}

/* one reply of c's; FL_DONE when it was the main one (and WAIT's),
   FL_LATE when c moves to the link's tail (NOSCRIPT), else FL_WAIT */
int fl_conn_on_reply(fl_conn *c, redisReply *r) {
  c->expect--;
  if (c->pending > 0) { /* deferred release, ASKING: answer ignored */
    c->pending--;
    freeReplyObject(r);
    return FL_WAIT;
  }
  if (c->cmd.script >= 0 && !c->retried && !c->reply && is_error(r, "NOSCRIPT")) {
    freeReplyObject(r);
    if (retry_eval(c) != 0) return FL_ERR;
    return FL_LATE;
  }
  if (c->reply) { /* the main reply is in: this is WAIT's */
    c->acked = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return FL_DONE;
  }
  /* Redis answers a malformed request (a key above proto-max-bulk-len, say)
     with this error and then closes the connection */
  if (is_error(r, "ERR Protocol error")) c->link->doomed = 1;
  c->reply = r;
  if (c->post && c->expect > 0 && !c->link->doomed) return FL_WAIT;
  return FL_DONE;
}

int fl_conn_step(fl_conn *c) {
  fl_link *k = c->link;
  /* under a parking host only the link's reader moves it: a request behind
     a live reader leaves its bytes and its reply to that reader, so what
     one loop turn produced goes out in one write */
  if (c->state == FL_RQ_QUEUED && k &&
      !(c->pool->has_park && k->reader && k->reader != c && fl_now() < k->rdl + GRACE)) {
    fl_link_drive(k, c->wkey);
    c->events = k->events;
  }
  if (c->state == FL_RQ_DONE) return FL_DONE;
  if (c->state == FL_RQ_ERR) return FL_ERR;
  if (c->state != FL_RQ_QUEUED) {
    fl_conn_fail(c, c->op ? c->op : "request", "not queued");
    return FL_ERR;
  }
  return FL_WAIT;
}

void fl_conn_end(fl_conn *c) {
  fl_pool *p = c->pool;
  drop_reply(c);
  if (c->state == FL_RQ_QUEUED) fl_conn_detach(c);
  fl_conn_unclaim(c);
  c->state = FL_RQ_IDLE;
  c->asking = 0;
  if (c->link && c->link->doomed && fl_link_idle(c->link)) fl_link_close(c->link, "closed");
  if (c->busy) { /* back to the pool's free requests */
    c->busy = 0;
    c->nextfree = p->freereqs;
    p->freereqs = c;
  }
}

int fl_conn_fd(const fl_conn *c) {
  return c->link && c->link->net ? fl_net_fd(c->link->net) : -1;
}

/* ---- waiting ------------------------------------------------------------------- */

static int wait_poll(fl_conn *c, double left) {
  struct pollfd pfd;
  int ms = (int)(left * 1000.0) + 1; /* round up: never wake before */
  pfd.fd = fl_conn_fd(c);
  pfd.events = (short)c->events;
  pfd.revents = 0;
  if (poll(&pfd, 1, ms) < 0 && errno != EINTR) {
    fl_conn_detach(c);
    fl_conn_fail(c, c->op, "poll: %s", strerror(errno));
    return FL_ERR;
  }
  return FL_WAIT;
}

/*
 * The reader's guard: while a link's reader waits on its socket under a
 * parking host, a to-be-closed userdata on its coroutine's stack points at
 * its request (its user value: the host table).  The wait's end disarms it
 * (guard_off); a coroutine closed in that wait (coroutine.close) closes it
 * armed instead, and the request ends there: the reader role goes to the
 * next request on the link, which is unparked at once.  Without it, the
 * requests parked behind a closed reader slept until its whole wait was up.
 */
#define GUARD_MT "fluxalock.readerguard"

typedef struct guard {
  fl_conn *c; /* NULL: disarmed */
} guard;

/* __close: never raises, never yields */
static int guard_close(lua_State *L) {
  guard *g = lua_touserdata(L, 1);
  fl_conn *c = g ? g->c : NULL;
  if (!c) return 0;
  g->c = NULL;
  fl_conn_end(c); /* its reply dropped, the role handed on (fl_conn_unclaim) */
  lua_getiuservalue(L, 1, 1);
  fl_wake_flush(L, c->pool, lua_gettop(L));
  return 0;
}

/* the wait that pushed a guard is over: disarm it (at the top, or just
   below an error message); the next wait or the function's return pops it */
static void guard_off(lua_State *L, int status) {
  guard *g = luaL_testudata(L, status == LUA_OK || status == LUA_YIELD ? -1 : -2, GUARD_MT);
  if (g) g->c = NULL;
}

/* the guard of c's wait, marked to-be-closed, on top of the stack */
static void guard_on(lua_State *L, fl_conn *c, int hostidx) {
  guard *g;
  if (luaL_testudata(L, -1, GUARD_MT)) lua_pop(L, 1); /* the last wait's, disarmed */
  g = lua_newuserdatauv(L, sizeof *g, 1);
  g->c = NULL;
  if (luaL_newmetatable(L, GUARD_MT)) {
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, hostidx);
  lua_setiuservalue(L, -2, 1);
  lua_toclose(L, -1);
  g->c = c;
}

/*
 * One wait of c's coroutine through the host table at hostidx: on the
 * link's socket (host.wait) when c is its reader, else parked (host.park,
 * on c->wkey) until a reader unparks it or the reader's own wait is over.
 * Returns lua_pcallk's status (k runs instead when the host yields).
 */
int fl_host_wait(lua_State *L, fl_conn *c, int hostidx, double left,
                 lua_KContext ctx, lua_KFunction k) {
  double now = fl_now();
  if (luaL_testudata(L, -1, GUARD_MT)) lua_pop(L, 1); /* the last wait's, disarmed */
  fl_wake_flush(L, c->pool, hostidx); /* before this coroutine sleeps */
  if (c->pool->has_park && !fl_conn_claim(c, now, left)) {
    double t = c->link->rdl + GRACE - now;
    lua_getfield(L, hostidx, "park");
    lua_pushlightuserdata(L, c->wkey);
    lua_pushnumber(L, t < left ? t : left);
    return lua_pcallk(L, 2, 0, 0, ctx, k);
  }
  if (c->pool->has_park && c->link) guard_on(L, c, hostidx);
  lua_getfield(L, hostidx, "wait");
  lua_pushinteger(L, fl_conn_fd(c));
  lua_pushstring(L, c->events == POLLOUT ? "w" : "r");
  lua_pushnumber(L, left);
  return lua_pcallk(L, 3, 0, 0, ctx, k);
}

/* c is done with waiting: hand the reader role on, deliver wake-ups */
static int leave(lua_State *L, fl_conn *c, int hostidx, int st) {
  fl_conn_unclaim(c);
  fl_wake_flush(L, c->pool, hostidx);
  return st;
}

/*
 * Drive c's request to the end.  hostidx is the stack index of the host
 * table, or 0 to wait with poll(2).  When the host yields, Lua later calls
 * k, which calls fl_run again with the pcall status.
 */
int fl_run(lua_State *L, fl_conn *c, int hostidx, lua_KFunction k,
           lua_KContext ctx) {
  int host = hostidx && lua_type(L, hostidx) == LUA_TTABLE;
  for (;;) {
    int st = fl_conn_step(c);
    double left, now;
    if (st != FL_WAIT) return leave(L, c, host ? hostidx : 0, st);
    now = fl_now();
    if (c->limit > 0 && now >= c->limit) { /* see fl_conn.limit */
      /* a blocked command (BLPOP) holds its link until the server answers */
      if (c->extra > 0 && c->link) fl_link_close(c->link, "abandoned");
      fl_conn_detach(c);
      return leave(L, c, host ? hostidx : 0, FL_LATE);
    }
    left = c->deadline - now;
    if (left <= 0) return leave(L, c, host ? hostidx : 0, fl_conn_timeout(c));
    if (c->limit > 0 && c->limit - now < left) left = c->limit - now;
    if (host) {
      st = fl_host_wait(L, c, hostidx, left, ctx, k);
      guard_off(L, st);
      if (st != LUA_OK) return leave(L, c, hostidx, fl_resume(L, c, st));
    } else if (wait_poll(c, left) == FL_ERR) {
      return FL_ERR;
    }
  }
}

/* continuation helper: called by each k with the pcall status */
int fl_resume(lua_State *L, fl_conn *c, int status) {
  guard_off(L, status); /* back from a wait that may have pushed one */
  if (status != LUA_OK && status != LUA_YIELD) {
    const char *m = lua_tostring(L, -1);
    fl_conn_detach(c);
    fl_conn_fail(c, c->op, "host wait: %s", m ? m : "error");
    lua_pop(L, 1);
    return FL_ERR;
  }
  return FL_WAIT;
}

/* nil, message; the request is over */
int fl_push_error(lua_State *L, fl_conn *c) {
  char msg[FL_ERRLEN];
  memcpy(msg, c->err, sizeof msg);
  fl_conn_end(c);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* a reply that is an error: nil, "fluxalock: <op> <where>: <msg>" */
int fl_push_reply_error(lua_State *L, fl_conn *c) {
  char msg[FL_ERRLEN];
  snprintf(msg, sizeof msg, "fluxalock: %s %s: %s", c->op, c->pool->o.where,
           c->reply->str ? c->reply->str : "error");
  fl_conn_end(c);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}
