/*
 * Requests (fl_req) on shared links (fl_link): hiredis async.c's habit.
 *
 * A link is one socket (a transport of net.h) and a FIFO of entries, one
 * per request queued on it; replies are matched to entries in order.  A
 * request whose caller gives up (timed out, abandoned) leaves a ghost entry
 * that keeps its place: its late replies are dropped when they come, so one
 * slow call costs neither the socket nor the requests behind it.  A link
 * that fails (I/O error, EOF, protocol error, or no memory once part of a
 * request was queued: the replies would no longer match) fails every
 * request on it; the next request reconnects.
 *
 * fl_req_step() never waits: it moves the request's link on (connect,
 * write, read and dispatch) and answers FL_DONE, FL_ERR, or FL_WAIT with
 * the events its link needs; drive.c is the one place that waits (in a
 * plain script the receive itself where the transport can: conn_io.c's
 * fl_link_wait).  Under a
 * parking host one coroutine per link (its reader) waits on the socket, the
 * others park: the reader role is held and handed on here (conn_io.c has
 * the byte-level half).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "net.h"

static void drop_reply(fl_req *c) {
  if (c->reply) freeReplyObject(c->reply);
  c->reply = NULL;
}

/* the message of a failed request; the static fallback when there was no
   memory for the message itself */
static char no_memory[] = "fluxalock: out of memory";

static void drop_err(fl_req *c) {
  if (c->err != no_memory) free(c->err);
  c->err = NULL;
}

const char *fl_req_errmsg(const fl_req *c) { return c->err ? c->err : ""; }

void fl_req_free(fl_req *c) {
  if (!c) return;
  drop_reply(c);
  drop_err(c);
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

/* ---- the reader role ----------------------------------------------------------- */


/* may c's coroutine wait on the link's socket?  Else it parks */
int fl_req_claim(fl_req *c, double now, double left) {
  fl_link *k = c->link;
  if (!k) return 1;
  if (k->reader && k->reader != c && now < k->rdl + FL_READER_GRACE) return 0;
  k->reader = c;
  k->rdl = now + left;
  return 1;
}

/* c no longer waits on its link: the next live request takes the role.
   Also when c never held it: a request woken to become the reader may find
   its reply already in and end without claiming, and the ones parked behind
   it would then sleep until their own timeout with nobody reading */
void fl_req_unclaim(fl_req *c) {
  fl_link *k = c->link;
  int i;
  if (!k || (k->reader && k->reader != c)) return;
  k->reader = NULL;
  fl_link_reap(k);
  for (i = 0; i < k->qlen; i++) {
    fl_req *o = k->q[(k->qhead + i) % k->qcap].c;
    if (o && o != c && o->state == FL_RQ_QUEUED) {
      fl_wake(k->pool, o->wkey);
      return;
    }
  }
}

/* ---- failures ------------------------------------------------------------------ */

/* the code of a failure, from the step that failed: the link's connect,
   AUTH or SELECT (conn_io.c names them), or the request's own command (a
   TLS handshake's code is set by conn_io.c after) */
static unsigned char code_of(const char *op, const char *why) {
  if (strcmp(op, "connect") == 0) return FL_E_CONNECT;
  if (strcmp(op, "auth") == 0) return FL_E_AUTH;
  if (strcmp(op, "select") == 0) return FL_E_SERVER;
  return strcmp(why, "timed out") == 0 ? FL_E_TIMEOUT : FL_E_IO;
}

/* "fluxalock: <op> <where>: <why>" into c->err, allocated to its length
   (a request holds no message buffer while it runs); c fails */
void fl_req_fail(fl_req *c, const char *op, const char *fmt, ...) {
  char why[FL_ERRLEN / 2], msg[FL_ERRLEN];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  snprintf(msg, sizeof msg, "fluxalock: %s %s: %s", op, c->pool->o.where, why);
  fl_req_setmsg(c, msg);
  c->code = code_of(op, why);
}

/* c fails with the whole message msg (a strategy's own words, never c's
   own message), kept at its length */
void fl_req_setmsg(fl_req *c, const char *msg) {
  size_t n = strlen(msg) + 1;
  drop_err(c);
  if ((c->err = malloc(n)) != NULL) memcpy(c->err, msg, n);
  else c->err = no_memory;
  drop_reply(c);
  c->state = FL_RQ_ERR;
}

static int append_eval(fl_link *k, fl_cmd *cmd);

/* cmd (as EVAL: no NOSCRIPT round) right behind c on its link k, for
   nobody: its reply is dropped; sent now.  cmd NULL (out of memory), or no
   memory to queue it: the link goes (part of a command may be queued) */
static void follow(fl_req *c, fl_link *k, fl_cmd *cmd) {
  if (!cmd || append_eval(k, cmd) != 0 || fl_link_push_ghost(k, c->h) != 0)
    fl_link_close(k, "out of memory");
  else
    fl_link_send(k);
}

/*
 * An obtain given up before its answer (its coroutine closed or collected,
 * a host wait that raised, a timeout: c->orphan, set by the fan) may still
 * take the lock on the server, for nobody: it would stay held until its
 * ttl.  Its release goes right behind it on the same link, so the server
 * runs it after the obtain (a release whose token does not hold the key
 * does nothing), as EVAL (no NOSCRIPT round), and is sent now; its reply
 * is dropped.  Out of memory: the link goes (part of a command may be
 * queued), and the obtain with it if it was not sent yet.
 */
static void orphan_release(fl_req *c, fl_link *k) {
  const fl_cmd *o = &c->cmd;
  size_t plen = c->pool->o.prefixlen, wakelen = 0;
  fl_pending d;
  fl_cmd cmd;
  const char *key = o->argv[3];
  size_t keylen = o->argvlen[3];
  char *buf = NULL;
  int bad;
  if (k->state == FL_LK_CLOSED || o->argc < 6 || keylen < plen) return;
  if (o->script == FL_S_MOBTAIN) { /* KEYS: lock and 5 companions; ARGV: token, ms, kind */
    if (o->argc < 12 || o->argvlen[9] != FL_TOKEN_LEN || o->argvlen[11] != 1) return;
    memset(&d, 0, sizeof d);
    memcpy(d.token, o->argv[9], FL_TOKEN_LEN);
    d.mode = (unsigned char)o->argv[11][0];
    d.keylen = keylen;
    /* a copy: the pending release's key is not const */
    if ((d.key = malloc(keylen + 1)) != NULL) memcpy(d.key, key, keylen);
    bad = !d.key || !(buf = fl_mode_pending(c, &d, &cmd));
  } else { /* KEYS: lock, fence; ARGV: token, ms */
    if (o->argvlen[5] != FL_TOKEN_LEN) return;
    d.key = NULL;
    bad = !(buf = fl_companion_dup(&c->pool->o, key + plen, keylen - plen, "wake:", &wakelen));
    if (!bad) fl_cmd_release(&cmd, key, keylen, buf, wakelen, o->argv[5]);
  }
  follow(c, k, bad ? NULL : &cmd);
  free(buf);
  free(d.key);
}

/* a release (or hand-over) given up before its answer: the server may
   answer NOSCRIPT (its script cache flushed, or not yet filled), and a
   ghost sends nothing again, so the lock would stay until its ttl.  It
   goes once more as EVAL behind itself (the second does nothing once the
   first released).  So does a Redlock obtain that a majority did without
   (c->resend, kind_redlock.c): on a node that has not cached the script
   yet it would never take the lock, which then stands on fewer nodes than
   it could, and a release there finds nothing to publish a wake-up for;
   behind an obtain that ran, the second finds the key taken and does
   nothing */
static void send_again(fl_req *c, fl_link *k) {
  int s = c->cmd.script;
  if (k->state == FL_LK_CLOSED || c->retried || c->reply ||
      (s != FL_S_RELEASE && s != FL_S_MRELEASE && s != FL_S_HANDOVER &&
       !(s == FL_S_OBTAIN && c->resend)))
    return;
  follow(c, k, &c->cmd);
}

/* c gives up on its entry: a ghost keeps the place of its replies */
void fl_req_detach(fl_req *c) {
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
  if (k->reader == c) fl_req_unclaim(c);
  c->state = FL_RQ_ERR;
  /* (with replicas: the obtain's answer may be in, and WAIT's not yet) */
  if (c->orphan && (c->cmd.script == FL_S_OBTAIN || c->cmd.script == FL_S_MOBTAIN) &&
      (!c->reply || (c->reply->type == REDIS_REPLY_INTEGER && c->reply->integer > 0)))
    orphan_release(c, k);
  send_again(c, k);
}

/* the request ran out of time */
int fl_req_timeout(fl_req *c) {
  fl_link *k = c->link;
  int connecting = k && k->state == FL_LK_CONNECTING;
  double now = fl_now();
  fl_req_detach(c);
  fl_req_fail(c, connecting ? "connect" : c->op, "timed out");
  /* nothing came back for a whole timeout, and the link is not busy with
     a request still within its own time (a WAIT for replicas, a BLPOP): the
     server is gone or frozen, and what is queued would wait for nothing */
  if (k && k->qlen > 0 && now - k->progress >= c->pool->o.timeout) {
    const fl_req *h = k->q[k->qhead].c;
    if (!h || now >= h->deadline) fl_link_close(k, "timed out");
  }
  return FL_ERR;
}

/* drop c's link (a reply that makes no sense: not Redis?) */
void fl_req_disconnect(fl_req *c) {
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
static int append_pending(fl_req *c) {
  fl_pool *p = c->pool;
  while (p->pending) {
    fl_pending *d = p->pending;
    fl_cmd cmd;
    char *modekeys = NULL;
    int r;
    if (d->mode && !(modekeys = fl_mode_pending(c, d, &cmd))) return -1;
    if (!d->mode) fl_cmd_release(&cmd, d->key, d->keylen, d->wake, d->wakelen, d->token);
    r = append_eval(c->link, &cmd);
    free(modekeys);
    if (r != 0) return -1;
    p->pending = d->next;
    free(d);
    c->pending++;
  }
  return 0;
}

static int append_asking(fl_req *c) {
  const char *a[1] = {"ASKING"};
  size_t al[1] = {6};
  c->pending++; /* its +OK is skipped like a deferred release's */
  return fl_link_out(c->link, 1, a, al);
}

/* WAIT <replicas> <ms> (its arguments are encoded at once: nothing kept) */
static int append_wait(fl_req *c) {
  const fl_opts *o = &c->pool->o;
  char n[24], ms[24];
  const char *a[3];
  size_t al[3];
  a[0] = "WAIT";
  a[1] = n;
  a[2] = ms;
  al[0] = 4;
  al[1] = (size_t)snprintf(n, sizeof n, "%d", o->replicas);
  al[2] = (size_t)snprintf(ms, sizeof ms, "%lld", (long long)(o->replica_timeout * 1000.0 + 0.5));
  return fl_link_out(c->link, 3, a, al);
}

/* the commands of c, appended to its link's output */
static int append_request(fl_req *c) {
  if (append_pending(c) != 0) return -1;
  if (c->asking && append_asking(c) != 0) return -1;
  if (append_cmd(c->link, &c->cmd) != 0) return -1;
  if (c->post && append_wait(c) != 0) return -1;
  return 0;
}

/* c->cmd's arguments copied into c: a NOSCRIPT retry re-encodes them
   later, when the caller's memory (its Lock, its stack) may be gone with an
   abandoned coroutine.  The script words (EVALSHA, sha, nkeys) are static */
static int own_args(fl_req *c) {
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
  /* the companion key (keys.c fl_companion) is copied too: its buffer is
     not kept while the request waits */
  free(c->scratch);
  c->scratch = NULL;
  c->scratchcap = 0;
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

#define OUT_BATCH 65536 /* bytes queued on a link that are sent at once */

/* start c->cmd; extra: seconds the command itself may block (BLPOP) */
int fl_req_begin(fl_req *c, const char *op, double extra) {
  double now = fl_now();
  const fl_opts *o = &c->pool->o;
  fl_link *k;
  int oom;
  /* a lock written (obtain, refresh) is confirmed by WAIT when asked to:
     pipelined on the same connection, as WAIT counts this client's writes */
  c->post = o->replicas > 0 &&
            (c->cmd.script == FL_S_OBTAIN || c->cmd.script == FL_S_REFRESH ||
             c->cmd.script == FL_S_MOBTAIN || c->cmd.script == FL_S_MREFRESH);
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
  drop_err(c);
  if (own_args(c) != 0) {
    c->link = NULL;
    fl_req_fail(c, op, "out of memory");
    return FL_ERR;
  }
  c->h = key_hash(&c->cmd);
  if (!(k = fl_link_for(c->pool, c->h))) {
    c->link = NULL;
    fl_req_fail(c, "connect", "out of memory");
    return FL_ERR;
  }
  c->link = k;
  if (k->state == FL_LK_CLOSED && (oom = fl_link_connect(k, now)) != 0) {
    fl_req_fail(c, "connect", "%s", oom == -2 ? "out of memory" : "cannot connect");
    return FL_ERR;
  }
  c->connwait = k->state == FL_LK_CONNECTING;
  c->deadline = now + (c->connwait ? o->connect_timeout : o->timeout + extra);
  if (append_request(c) != 0 || fl_link_push(k, c) != 0) {
    /* what was appended is sent unanswered: the link cannot be trusted */
    fl_link_close(k, "out of memory");
    fl_req_fail(c, op, "out of memory");
    return FL_ERR;
  }
  c->expect = c->pending + 1 + c->post;
  c->state = FL_RQ_QUEUED;
  /* a burst of requests behind a busy reader (thousands of coroutines in
     one loop turn) goes out a batch at a time, not all in the next turn's
     one write: the link's buffer stays a batch, not the whole burst */
  if (k->state == FL_LK_READY && k->outlen - k->outpos >= OUT_BATCH) fl_link_send(k);
  return FL_WAIT;
}

static int is_error(const redisReply *r, const char *prefix) {
  return r->type == REDIS_REPLY_ERROR && r->str &&
         strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* NOSCRIPT: the server lost its script cache (SCRIPT FLUSH, restart): send
   the body once, at the link's tail; EVAL caches it again */
static int retry_eval(fl_req *c) {
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
int fl_req_on_reply(fl_req *c, redisReply *r) {
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

int fl_req_step(fl_req *c) {
  fl_link *k = c->link;
  /* under a parking host only the link's reader moves it: a request behind
     a live reader leaves its bytes and its reply to that reader, so what
     one loop turn produced goes out in one write */
  if (c->state == FL_RQ_QUEUED && k &&
      !(c->pool->has_park && k->reader && k->reader != c && fl_now() < k->rdl + FL_READER_GRACE)) {
    fl_link_drive(k, c->wkey);
    c->events = (short)k->events;
  }
  if (c->state == FL_RQ_DONE) return FL_DONE;
  if (c->state == FL_RQ_ERR) return FL_ERR;
  if (c->state != FL_RQ_QUEUED) {
    fl_req_fail(c, c->op ? c->op : "request", "not queued");
    return FL_ERR;
  }
  return FL_WAIT;
}

void fl_req_end(fl_req *c) {
  fl_pool *p = c->pool;
  drop_reply(c);
  if (c->state == FL_RQ_QUEUED) fl_req_detach(c);
  fl_req_unclaim(c);
  c->state = FL_RQ_IDLE;
  c->asking = 0;
  if (c->link && c->link->doomed && fl_link_idle(c->link)) fl_link_close(c->link, "closed");
  if (c->busy) { /* back to the pool's free requests */
    c->busy = 0;
    c->nextfree = p->freereqs;
    p->freereqs = c;
  }
}

int fl_req_fd(const fl_req *c) {
  return c->link && c->link->net ? fl_net_fd(c->link->net) : -1;
}


/* one request to its end, blocking with poll(2): only a flush of deferred
   releases (server.c), which never runs under a host and is bounded by the
   pool's timeouts; every Lua call waits in drive.c.  FL_DONE or FL_ERR */
int fl_req_block(fl_req *c) {
  for (;;) {
    int st = fl_req_step(c);
    double left;
    struct pollfd pfd;
    if (st != FL_WAIT) return st;
    left = c->deadline - fl_now();
    if (left <= 0) return fl_req_timeout(c);
    pfd.fd = fl_req_fd(c);
    pfd.events = (short)c->events;
    pfd.revents = 0;
    if (poll(&pfd, 1, fl_poll_ms(left)) < 0 && errno != EINTR) {
      fl_req_detach(c);
      return FL_ERR;
    }
  }
}
