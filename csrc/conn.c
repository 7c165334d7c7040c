/*
 * fl_conn: one connection, driven in non-blocking steps.
 *
 * The socket is always non-blocking.  fl_conn_step() never waits: it does
 * what the socket allows and answers FL_DONE, FL_ERR, or FL_WAIT with the
 * events it needs (c->events) and the deadline (c->deadline).  fl_run() is
 * the one place that waits: with poll(2) for plain scripts, or through the
 * pool's host function (an event loop's "wait for this fd") with a
 * lua_pcallk continuation, so the same steps serve both.
 *
 * A request is pipelined in one write: AUTH/SELECT when the connection is
 * new, the releases that __gc deferred, then the main command.  Any I/O
 * failure or timeout drops the connection (a late reply must never be read as
 * the answer to a later command); the next request reconnects.
 *
 * The connection is the transport of net.h (TCP, Unix socket or TLS, and
 * a host name resolved without blocking); requests are encoded here, and
 * replies parsed by a hiredis reader.  Bytes the transport holds (TLS) are
 * invisible to poll: a read goes on until the transport would block.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "fluxalock.h"
#include "net.h"

double fl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

fl_conn *fl_conn_new(fl_pool *p) {
  fl_conn *c = calloc(1, sizeof *c);
  if (c) c->pool = p;
  return c;
}

static void drop_reply(fl_conn *c) {
  if (c->reply) freeReplyObject(c->reply);
  c->reply = NULL;
}

void fl_conn_disconnect(fl_conn *c) {
  drop_reply(c);
  if (c->net) fl_net_close(c->net);
  if (c->rd) redisReaderFree(c->rd);
  c->net = NULL;
  c->rd = NULL;
  c->connecting = 0;
  c->doomed = 0;
}

void fl_conn_free(fl_conn *c) {
  if (!c) return;
  fl_conn_disconnect(c);
  free(c->scratch);
  free(c->out);
  free(c);
}

/* record "fluxalock: <op> <where>: <why>" and drop the connection */
static int fail(fl_conn *c, const char *op, const char *fmt, ...) {
  char why[FL_ERRLEN / 2];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  snprintf(c->err, sizeof c->err, "fluxalock: %s %s: %s", op,
           c->pool->o.where, why);
  fl_conn_disconnect(c);
  return FL_ERR;
}

/* is an idle connection still usable?  A server that went away leaves the
   socket readable (EOF) while we owe it nothing: reconnect before writing,
   instead of failing the call that happens to come first. */
static int stale(fl_conn *c) {
  struct pollfd pfd;
  if (fl_net_pending(c->net)) return 1; /* TLS data nobody asked for */
  pfd.fd = fl_net_fd(c->net);
  pfd.events = POLLIN;
  pfd.revents = 0;
  return poll(&pfd, 1, 0) != 0;
}

/* RESP: *<argc>\r\n then $<len>\r\n<bytes>\r\n per argument */
static int out_argv(fl_conn *c, int argc, const char *const *argv,
                    const size_t *len) {
  size_t need = 16, n;
  int i;
  for (i = 0; i < argc; i++) need += len[i] + 32;
  if (c->outlen + need > c->outcap) {
    size_t cap = c->outcap ? c->outcap : 256;
    char *o;
    while (cap < c->outlen + need) cap *= 2;
    if (!(o = realloc(c->out, cap))) return REDIS_ERR;
    c->out = o;
    c->outcap = cap;
  }
  n = c->outlen;
  n += (size_t)sprintf(c->out + n, "*%d\r\n", argc);
  for (i = 0; i < argc; i++) {
    n += (size_t)sprintf(c->out + n, "$%lu\r\n", (unsigned long)len[i]);
    memcpy(c->out + n, argv[i], len[i]);
    n += len[i];
    c->out[n++] = '\r';
    c->out[n++] = '\n';
  }
  c->outlen = n;
  return REDIS_OK;
}

static int append_cmd(fl_conn *c, fl_cmd *cmd) {
  return out_argv(c, cmd->argc, cmd->argv, cmd->argvlen);
}

/* the EVAL form of an EVALSHA command, for NOSCRIPT and deferred releases */
static int append_eval(fl_conn *c, fl_cmd *cmd) {
  fl_cmd e = *cmd;
  e.argv[0] = "EVAL";
  e.argvlen[0] = 4;
  e.argv[1] = fl_scripts[cmd->script].body;
  e.argvlen[1] = strlen(fl_scripts[cmd->script].body);
  return append_cmd(c, &e);
}

/*
 * Replies never need big arrays (the largest is a CLUSTER SLOTS map), but
 * hiredis allocates an array's element table as soon as it reads the header:
 * a server answering "*322222222" (garbage, or not Redis at all) would make
 * us reserve gigabytes before a single element arrived.  hiredis 1.x has a
 * limit for that; 0.14 has none, so its array constructor is wrapped.
 */
#define MAX_ELEMENTS (1 << 20)

#if HIREDIS_MAJOR >= 1
void fl_reader_cap(redisReader *r) { r->maxelements = MAX_ELEMENTS; }
#else
static redisReplyObjectFunctions capped;
static void *(*plain_array)(const redisReadTask *, int);

static void *capped_array(const redisReadTask *t, int n) {
  return n > MAX_ELEMENTS ? NULL : plain_array(t, n); /* NULL: a reader error */
}

/* the first call (from the Lua thread: renew.c makes one before it starts
   its thread) sets up the shared table */
void fl_reader_cap(redisReader *r) {
  if (!plain_array) { /* the same default functions for every reader */
    capped = *r->fn;
    plain_array = capped.createArray;
    capped.createArray = capped_array;
  }
  r->fn = &capped;
}
#endif

static int connect_ctx(fl_conn *c) {
  const fl_opts *o = &c->pool->o;
  c->net = fl_net_open(o, fl_now() + o->connect_timeout);
  c->rd = redisReaderCreate();
  if (!c->net || !c->rd) return fail(c, "connect", "out of memory");
  if (*fl_net_error(c->net)) return fail(c, "connect", "%s", fl_net_error(c->net));
  fl_reader_cap(c->rd);
  c->connecting = 1;
  c->handshake = 0;
  c->gen = c->pool->gen;
  if (o->password) {
    const char *argv[3] = {"AUTH", o->username, o->password};
    size_t len[3] = {4, 0, strlen(o->password)};
    int n = 2;
    if (o->username) { /* ACL user */
      len[1] = strlen(o->username);
      argv[2] = o->password;
      n = 3;
    } else {
      argv[1] = o->password;
      len[1] = len[2];
    }
    if (out_argv(c, n, argv, len) != REDIS_OK)
      return fail(c, "connect", "out of memory");
    c->handshake++;
  }
  if (o->db) {
    char db[24];
    const char *argv[2] = {"SELECT", db};
    size_t len[2] = {6, 0};
    len[1] = (size_t)snprintf(db, sizeof db, "%d", o->db);
    if (out_argv(c, 2, argv, len) != REDIS_OK)
      return fail(c, "connect", "out of memory");
    c->handshake++;
  }
  return FL_DONE;
}

/* queue the releases that __gc deferred in front of this request */
static int append_pending(fl_conn *c) {
  fl_pool *p = c->pool;
  c->pending = 0;
  while (p->pending) {
    fl_pending *d = p->pending;
    fl_cmd cmd;
    fl_cmd_release(&cmd, d->key, d->keylen, d->wake, d->wakelen, d->token);
    if (append_eval(c, &cmd) != REDIS_OK) return -1;
    p->pending = d->next;
    free(d);
    c->pending++;
  }
  return 0;
}

/* start c->cmd; extra: seconds the command itself may block (BLPOP) */
int fl_conn_begin(fl_conn *c, const char *op, double extra) {
  double now = fl_now();
  const fl_opts *o = &c->pool->o;
  /* a lock written (obtain, refresh) is confirmed by WAIT when asked to:
     pipelined on the same connection, as WAIT counts this client's writes */
  c->post = o->replicas > 0 &&
            (c->cmd.script == FL_S_OBTAIN || c->cmd.script == FL_S_REFRESH);
  c->acked = 0;
  if (c->post) extra += o->replica_timeout;
  c->op = op;
  c->t0 = now; /* stats.c: the log's 'seconds' */
  c->busy = 1;
  c->retried = 0;
  c->rewait = 0;
  c->written = 0;
  c->limit = 0;
  c->outlen = c->outpos = 0;
  drop_reply(c);
  /* a connection to where the pool pointed before a retarget is not reused */
  if (c->net && (c->gen != c->pool->gen || stale(c))) fl_conn_disconnect(c);
  if (!c->net) {
    if (connect_ctx(c) == FL_ERR) return FL_ERR;
    c->deadline = now + c->pool->o.connect_timeout;
  } else {
    c->handshake = 0;
    c->deadline = now + c->pool->o.timeout + extra;
  }
  c->extra = extra;
  if (append_pending(c) != 0) return fail(c, op, "out of memory");
  if (c->asking) { /* cluster ASK: the next command is for an importing slot */
    const char *a[1] = {"ASKING"};
    size_t al[1] = {6};
    if (out_argv(c, 1, a, al) != REDIS_OK)
      return fail(c, op, "out of memory");
    c->pending++; /* its +OK is skipped like a deferred release's */
  }
  if (append_cmd(c, &c->cmd) != REDIS_OK) return fail(c, op, "out of memory");
  if (c->post) {
    const char *a[3] = {"WAIT", c->waitarg[0], c->waitarg[1]};
    size_t al[3] = {4, 0, 0};
    al[1] = (size_t)snprintf(c->waitarg[0], sizeof c->waitarg[0], "%d", o->replicas);
    al[2] = (size_t)snprintf(c->waitarg[1], sizeof c->waitarg[1], "%lld",
                             (long long)(o->replica_timeout * 1000.0 + 0.5));
    if (out_argv(c, 3, a, al) != REDIS_OK)
      return fail(c, op, "out of memory");
  }
  c->expect = c->handshake + c->pending + 1 + c->post;
  return FL_WAIT;
}

/* the transport's reason, or "timed out" when its deadline passed */
static const char *why(fl_conn *c) {
  const char *e = fl_net_error(c->net);
  return *e ? e : "timed out";
}

static int step_connect(fl_conn *c) {
  int st = fl_net_step(c->net); /* resolve, connect, TLS handshake */
  if (st == FL_WAIT) {
    c->events = fl_net_events(c->net);
    return FL_WAIT;
  }
  if (st == FL_ERR) return fail(c, "connect", "%s", why(c));
  c->connecting = 0;
  if (c->ever) c->pool->n.reconnects++; /* connected again (stats.c) */
  c->ever = 1;
  return FL_DONE;
}

static int is_error(const redisReply *r, const char *prefix) {
  return r->type == REDIS_REPLY_ERROR && r->str &&
         strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* one reply has arrived; FL_DONE when it was the main one */
static int on_reply(fl_conn *c, redisReply *r) {
  c->expect--;
  if (c->handshake > 0) {
    /* AUTH comes first when there is a password, then SELECT */
    int is_auth = c->pool->o.password && c->handshake == 1 + (c->pool->o.db != 0);
    c->handshake--;
    if (r->type == REDIS_REPLY_ERROR) {
      char msg[FL_ERRLEN];
      snprintf(msg, sizeof msg, "%s", r->str ? r->str : "error");
      freeReplyObject(r);
      if (is_auth) return fail(c, "auth", "%s", msg);
      return fail(c, "select", "db %d: %s", c->pool->o.db, msg);
    }
    freeReplyObject(r);
    return FL_WAIT;
  }
  if (c->pending > 0) { /* deferred release: best effort, answer ignored */
    c->pending--;
    if (c->rewait) { /* the WAIT of a NOSCRIPT round: the retry starts now */
      c->rewait = 0;
      c->deadline = fl_now() + c->pool->o.timeout + c->extra;
    }
    freeReplyObject(r);
    return FL_WAIT;
  }
  if (c->cmd.script >= 0 && !c->retried && is_error(r, "NOSCRIPT")) {
    /* the server lost its script cache (SCRIPT FLUSH, restart): send the
       body once; EVAL caches it again for the EVALSHAs that follow */
    freeReplyObject(r);
    c->retried = 1;
    /* a round trip of its own: the retry gets the command's timeout, from
       now or, when a WAIT follows the failed EVALSHA, from that WAIT's end
       (it waits for nothing, and may take all of replica_timeout) */
    c->deadline = fl_now() + c->pool->o.timeout + c->extra;
    c->rewait = c->post;
    c->outlen = c->outpos = 0; /* all before was sent */
    c->pending = c->post; /* the WAIT after the failed EVALSHA: skipped */
    if (c->asking) { /* the EVAL needs its own ASKING */
      const char *a[1] = {"ASKING"};
      size_t al[1] = {6};
      if (out_argv(c, 1, a, al) != REDIS_OK) return fail(c, c->op, "out of memory");
      c->pending++;
    }
    if (append_eval(c, &c->cmd) != REDIS_OK) return fail(c, c->op, "out of memory");
    if (c->post) {
      const char *a[3] = {"WAIT", c->waitarg[0], c->waitarg[1]};
      size_t al[3] = {4, strlen(c->waitarg[0]), strlen(c->waitarg[1])};
      if (out_argv(c, 3, a, al) != REDIS_OK)
        return fail(c, c->op, "out of memory");
    }
    c->expect = c->pending + 1 + c->post;
    c->written = 0;
    return FL_WAIT;
  }
  if (c->reply) { /* the main reply is in: this is WAIT's */
    c->acked = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return FL_DONE;
  }
  /* Redis answers a malformed request (a key above proto-max-bulk-len, say)
     with this error and then closes the connection: a next request sent on
     it would race that close */
  if (is_error(r, "ERR Protocol error")) c->doomed = 1;
  c->reply = r;
  /* a WAIT follows, unless the server is about to close the connection */
  return c->post && !c->doomed ? FL_WAIT : FL_DONE;
}

int fl_conn_step(fl_conn *c) {
  if (!c->net) return fail(c, c->op, "not connected");
  if (c->connecting) {
    int r = step_connect(c);
    if (r != FL_DONE) return r;
    /* connected: the command's own time starts now */
    c->deadline = fl_now() + c->pool->o.timeout + c->extra;
  }
  while (!c->written) {
    while (c->outpos < c->outlen) {
      long n = fl_net_send(c->net, c->out + c->outpos, c->outlen - c->outpos);
      if (n < 0) return fail(c, c->op, "%s", why(c));
      if (n == 0) { /* POLLOUT, or POLLIN for TLS that must read first */
        c->events = fl_net_events(c->net);
        return FL_WAIT;
      }
      c->outpos += (size_t)n;
    }
    c->written = 1;
    /* the answer cannot be there yet: wait before trying to read */
    c->events = POLLIN;
    return FL_WAIT;
  }
  for (;;) {
    void *r = NULL;
    char buf[16384];
    long got;
    if (redisReaderGetReply(c->rd, &r) != REDIS_OK)
      /* 0.14 reports a refused array (fl_reader_cap) as "Out of memory" */
      return fail(c, c->op, "protocol error: %s",
                  strcmp(c->rd->errstr, "Out of memory") == 0
                      ? "reply too large (or out of memory)"
                      : c->rd->errstr);
    if (r) {
      int st = on_reply(c, r);
      if (st != FL_WAIT) return st;
      if (!c->written) return fl_conn_step(c); /* NOSCRIPT: write the EVAL */
      continue;
    }
    /* read until the transport would block: TLS may hold decrypted bytes
       that poll cannot see */
    if ((got = fl_net_recv(c->net, buf, sizeof buf)) < 0)
      return fail(c, c->op, "%s", why(c));
    if (got == 0) { /* POLLIN, or POLLOUT for TLS that must write first */
      c->events = fl_net_events(c->net);
      return FL_WAIT;
    }
    if (redisReaderFeed(c->rd, buf, (size_t)got) != REDIS_OK)
      return fail(c, c->op, "protocol error: %s", c->rd->errstr);
  }
}

void fl_conn_end(fl_conn *c) {
  drop_reply(c);
  c->busy = 0;
  c->asking = 0;
  if (c->doomed) fl_conn_disconnect(c);
  if (c->outcap > 65536) { /* a huge key passed: do not keep its buffer */
    free(c->out);
    c->out = NULL;
    c->outcap = c->outlen = c->outpos = 0;
  }
}

/* the request ran out of time (for drivers other than fl_run) */
int fl_conn_timeout(fl_conn *c) {
  return fail(c, c->connecting ? "connect" : c->op, "timed out");
}

static int wait_poll(fl_conn *c, double left) {
  struct pollfd pfd;
  int ms = (int)(left * 1000.0) + 1; /* round up: never wake before */
  pfd.fd = fl_net_fd(c->net);
  pfd.events = (short)c->events;
  pfd.revents = 0;
  if (poll(&pfd, 1, ms) < 0 && errno != EINTR)
    return fail(c, c->op, "poll: %s", strerror(errno));
  return FL_WAIT;
}

/*
 * Drive c's request to the end.  hostidx is the stack index of the host's
 * wait function, or 0 to wait with poll(2).  When the host function yields,
 * Lua later calls k, which calls fl_run again with the pcall status.
 */
int fl_run(lua_State *L, fl_conn *c, int hostidx, lua_KFunction k,
           lua_KContext ctx) {
  for (;;) {
    int st = fl_conn_step(c);
    double left, now;
    if (st != FL_WAIT) return st;
    now = fl_now();
    if (c->limit > 0 && now >= c->limit) { /* see fl_conn.limit */
      fl_conn_disconnect(c);
      c->ever = 0; /* on purpose: its next connect is no reconnect */
      return FL_LATE;
    }
    left = c->deadline - now;
    if (left <= 0)
      return fail(c, c->connecting ? "connect" : c->op, "timed out");
    if (c->limit > 0 && c->limit - now < left) left = c->limit - now;
    if (hostidx && lua_type(L, hostidx) == LUA_TFUNCTION) {
      /* the host decides what a wait outside a coroutine means */
      lua_pushvalue(L, hostidx);
      lua_pushinteger(L, fl_net_fd(c->net));
      lua_pushstring(L, c->events == POLLOUT ? "w" : "r");
      lua_pushnumber(L, left);
      st = lua_pcallk(L, 3, 0, 0, ctx, k);
      if (st != LUA_OK) { /* the host's wait raised: fail the request */
        const char *m = lua_tostring(L, -1);
        fail(c, c->op, "host wait: %s", m ? m : "error");
        lua_pop(L, 1);
        return FL_ERR;
      }
    } else if (wait_poll(c, left) == FL_ERR) {
      return FL_ERR;
    }
  }
}

/* continuation helper: called by each k with the pcall status */
int fl_resume(lua_State *L, fl_conn *c, int status) {
  if (status != LUA_OK && status != LUA_YIELD) {
    const char *m = lua_tostring(L, -1);
    fail(c, c->op, "host wait: %s", m ? m : "error");
    lua_pop(L, 1);
    return FL_ERR;
  }
  return FL_WAIT;
}

/* nil, message; the connection is idle again */
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
