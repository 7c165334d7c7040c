/*
 * The renewal thread's connections (renew.c has the design).
 *
 * Only the renewal thread runs this file.  It never touches an fl_pool or
 * fl_conn (those belong to the Lua thread and are not thread-safe): it has
 * one connection per distinct target (host/port or socket, db, user), made
 * from its own copy of the options, over the non-blocking transport of
 * net.h.  Requests are pipelined: each connection keeps a FIFO of the legs
 * (one entry asking one node once) whose replies are due, matched in order
 * (hiredis async's habit), after the AUTH/SELECT replies of its handshake.
 *
 * A connection that fails, or whose reply is overdue (timeout, or
 * connect_timeout + timeout while connecting), is closed with every leg on
 * it failed: the entries retry with their own backoff until their local
 * deadline.  Nothing here ever prints a password, a token or a key.
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "renew.h"
#include "net.h"

#define MAX_HOPS 5 /* MOVED redirects per leg and attempt */

struct rn_conn {
  rn_conn *next;
  fl_opts o;          /* own deep copy */
  fl_net *n;
  redisReader *rd;
  int ready;          /* the transport is connected */
  int skip;           /* handshake replies still due */
  int pfi;            /* its slot in the pollfd array, or -1 */
  char *out;
  size_t outlen, outpos, outcap;
  rn_leg *head, *tail;
  long long deadline; /* monotonic ns; 0 while nothing is due */
};

long long rn_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long ns(double s) { return (long long)(s * 1e9); }

static int streq(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

/* the same server, reached the same way (the same TLS settings: copies
   of a pool's options share its fl_tls) */
static int same_target(const fl_opts *a, const fl_opts *b) {
  return a->port == b->port && a->db == b->db && a->tls == b->tls && streq(a->host, b->host) &&
         streq(a->path, b->path) && streq(a->username, b->username) &&
         streq(a->password, b->password);
}

/* ---- output: RESP encoding ----------------------------------------------- */

static int put(rn_conn *c, const char *s, size_t n) {
  if (c->outlen + n > c->outcap) {
    size_t cap = c->outcap ? c->outcap : 256;
    char *b;
    while (cap < c->outlen + n) cap *= 2;
    if (!(b = realloc(c->out, cap))) return -1;
    c->out = b;
    c->outcap = cap;
  }
  memcpy(c->out + c->outlen, s, n);
  c->outlen += n;
  return 0;
}

static int command(rn_conn *c, int argc, const char **argv, const size_t *len) {
  char head[32];
  int i, r;
  size_t n = (size_t)snprintf(head, sizeof head, "*%d\r\n", argc);
  r = put(c, head, n); /* head is written before it is read: two statements */
  for (i = 0; i < argc; i++) {
    n = (size_t)snprintf(head, sizeof head, "$%lu\r\n", (unsigned long)len[i]);
    r |= put(c, head, n);
    r |= put(c, argv[i], len[i]);
    r |= put(c, "\r\n", 2);
  }
  return r;
}

/* EVALSHA (or, after NOSCRIPT, EVAL) of the refresh script in replace mode */
static int refresh_cmd(rn_conn *c, const rn_leg *l) {
  const fl_renewal *e = l->e;
  /* a lock in a mode (e->hkey): its own refresh script, with its holders'
     key as KEYS[2] (modes.c) */
  const fl_script *s = &fl_scripts[e->hkey ? FL_S_MREFRESH : FL_S_REFRESH];
  int m = e->hkey != NULL;
  const char *argv[8];
  size_t len[8];
  argv[0] = l->evaled ? "EVAL" : "EVALSHA";
  argv[1] = l->evaled ? s->body : s->sha;
  argv[2] = m ? "2" : "1";
  argv[3] = e->key;
  argv[4] = e->hkey;
  argv[4 + m] = e->token;
  argv[5 + m] = e->ttlarg;
  argv[6 + m] = "1"; /* replace: the time left becomes the ttl */
  len[0] = strlen(argv[0]);
  len[1] = strlen(argv[1]);
  len[2] = 1;
  len[3] = e->keylen;
  len[4] = e->hkeylen;
  len[4 + m] = FL_TOKEN_LEN;
  len[5 + m] = strlen(e->ttlarg);
  len[6 + m] = 1;
  return command(c, 7 + m, argv, len);
}

static int sentinel_cmd(rn_conn *c, const rn_leg *l) {
  const char *argv[3];
  size_t len[3];
  argv[0] = "SENTINEL";
  argv[1] = "get-master-addr-by-name";
  argv[2] = l->e->master;
  len[0] = 8;
  len[1] = 23;
  len[2] = strlen(l->e->master);
  return command(c, 3, argv, len);
}

static int leg_cmd(rn_conn *c, const rn_leg *l) {
  return l->query ? sentinel_cmd(c, l) : refresh_cmd(c, l);
}

static fl_opts *leg_target(const rn_leg *l) {
  return l->query ? &l->e->sentinels[l->ti] : &l->e->targets[l->ti];
}

static int handshake(rn_conn *c) {
  const char *argv[3];
  size_t len[3];
  char db[24];
  int r = 0, n = 0;
  if (c->o.password) {
    argv[n] = "AUTH";
    len[n++] = 4;
    if (c->o.username) {
      argv[n] = c->o.username;
      len[n++] = strlen(c->o.username);
    }
    argv[n] = c->o.password;
    len[n] = strlen(c->o.password);
    r |= command(c, n + 1, argv, len);
    c->skip++;
  }
  if (c->o.db != 0) {
    snprintf(db, sizeof db, "%d", c->o.db);
    argv[0] = "SELECT";
    len[0] = 6;
    argv[1] = db;
    len[1] = strlen(db);
    r |= command(c, 2, argv, len);
    c->skip++;
  }
  return r;
}

/* ---- connections ------------------------------------------------------- */

static void leg_done(rn_leg *l, int st) {
  l->st = st;
  l->c = NULL;
  l->qnext = NULL;
  l->e->inflight--;
}

static void conn_free(rn_conn *c) {
  if (c->n) fl_net_close(c->n);
  if (c->rd) redisReaderFree(c->rd);
  if (c->out) memset(c->out, 0, c->outlen); /* AUTH's password */
  free(c->out);
  fl_opts_free(&c->o);
  free(c);
}

/* close c, failing every leg that waits on it */
static void conn_fail(rn_io *io, rn_conn *c) {
  rn_conn **pp = &io->conns;
  while (*pp && *pp != c) pp = &(*pp)->next;
  if (*pp) *pp = c->next;
  while (c->head) {
    rn_leg *l = c->head;
    c->head = l->qnext;
    leg_done(l, LEG_ERR);
  }
  conn_free(c);
}

static rn_conn *conn_open(rn_io *io, const fl_opts *o) {
  rn_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  if (fl_opts_copy(&c->o, o) != 0) {
    free(c);
    return NULL;
  }
  c->rd = redisReaderCreate();
  if (c->rd) fl_reader_cap(c->rd);
  c->n = c->rd ? fl_net_open(&c->o, fl_now() + o->connect_timeout) : NULL;
  if (!c->n || handshake(c) != 0) {
    conn_free(c);
    return NULL;
  }
  c->deadline = rn_mono() + ns(o->connect_timeout + o->timeout);
  c->next = io->conns;
  io->conns = c;
  return c;
}

static rn_conn *conn_for(rn_io *io, const fl_opts *o) {
  rn_conn *c;
  for (c = io->conns; c; c = c->next)
    if (same_target(&c->o, o)) return c;
  return conn_open(io, o);
}

static void enqueue(rn_conn *c, rn_leg *l) {
  l->qnext = NULL;
  l->c = c;
  if (c->tail) c->tail->qnext = l;
  else c->head = l;
  c->tail = l;
  if (!c->deadline) c->deadline = rn_mono() + ns(c->o.timeout);
}

/* send leg l to its target (its entry's inflight count goes up by one; it
   comes down when the leg ends, LEG_OK, LEG_NOTOWNER or LEG_ERR) */
void rn_leg_send(rn_io *io, rn_leg *l) {
  rn_conn *c = conn_for(io, leg_target(l));
  l->e->inflight++;
  l->st = LEG_QUEUED;
  if (!c || leg_cmd(c, l) != 0) {
    leg_done(l, LEG_ERR);
    return;
  }
  enqueue(c, l);
}

/* point o at host (n bytes) and port; same credentials.  0, or -1 */
static int retarget(fl_opts *o, const char *h, size_t n, int port) {
  char *host;
  if (port <= 0 || port > 65535 || n == 0 || n >= 200 || memchr(h, 0, n) ||
      !(host = malloc(n + 1)))
    return -1;
  memcpy(host, h, n);
  host[n] = '\0';
  free(o->host);
  free(o->path);
  o->path = NULL;
  o->host = host;
  o->port = port;
  snprintf(o->where, sizeof o->where, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
  return 0;
}

/* a port number, or 0 (refused by retarget) for anything else */
static int port_of(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  return end != s && *end == '\0' && v > 0 && v <= 65535 ? (int)v : 0;
}

/* "MOVED <slot> <host>:<port>" */
static int moved(fl_opts *o, const char *msg) {
  const char *sp = strchr(msg + 6, ' '), *colon;
  if (!sp || !(colon = strrchr(sp, ':'))) return -1;
  return retarget(o, sp + 1, (size_t)(colon - sp - 1), port_of(colon + 1));
}

/* a sentinel's answer: [host, port] of the master; 0 if it retargeted */
static int sentinel_answer(fl_renewal *e, const redisReply *r) {
  char port[8];
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
      r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
      r->element[1]->len >= sizeof port)
    return -1;
  memcpy(port, r->element[1]->str, r->element[1]->len);
  port[r->element[1]->len] = '\0';
  if (e->targets[0].host && e->targets[0].port == port_of(port) &&
      strlen(e->targets[0].host) == r->element[0]->len &&
      memcmp(e->targets[0].host, r->element[0]->str, r->element[0]->len) == 0)
    return 0; /* the same master */
  return retarget(&e->targets[0], r->element[0]->str, r->element[0]->len, port_of(port));
}

/* one reply for the head of c's queue; -1: the connection is unusable */
static int on_reply(rn_io *io, rn_conn *c, const redisReply *r) {
  rn_leg *l = c->head;
  if (c->skip > 0) { /* AUTH / SELECT */
    c->skip--;
    return r->type == REDIS_REPLY_ERROR ? -1 : 0;
  }
  if (!l) return -1; /* a reply nobody asked for: not a Redis we know */
  c->head = l->qnext;
  if (!c->head) c->tail = NULL;
  if (l->query) {
    leg_done(l, sentinel_answer(l->e, r) == 0 ? LEG_OK : LEG_ERR);
  } else if (r->type == REDIS_REPLY_INTEGER) {
    leg_done(l, r->integer == 1 ? LEG_OK : LEG_NOTOWNER);
  } else if (r->type == REDIS_REPLY_ERROR && !l->evaled &&
             strncmp(r->str, "NOSCRIPT", 8) == 0) {
    l->evaled = 1; /* the server lost its script cache: send the body */
    if (leg_cmd(c, l) != 0) leg_done(l, LEG_ERR);
    else enqueue(c, l);
  } else if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "MOVED ", 6) == 0 &&
             l->hops < MAX_HOPS && moved(&l->e->targets[l->ti], r->str) == 0) {
    l->hops++;
    leg_done(l, LEG_IDLE);
    rn_leg_send(io, l); /* may open a connection: c stays valid */
  } else {
    leg_done(l, LEG_ERR); /* READONLY, LOADING, ASK...: try again later */
  }
  c->deadline = c->head ? rn_mono() + ns(c->o.timeout) : 0;
  return 0;
}

/* ---- driving ------------------------------------------------------------ */

/* fill pf with what each connection waits for; *wake_at becomes the
   earliest reply deadline if sooner.  Returns the number of slots used */
int rn_io_fill(rn_io *io, struct pollfd *pf, int max, long long *wake_at) {
  rn_conn *c;
  int n = 0;
  for (c = io->conns; c; c = c->next) {
    c->pfi = -1;
    if (c->deadline && c->deadline < *wake_at) *wake_at = c->deadline;
    if (c->ready && fl_net_pending(c->n)) *wake_at = 0; /* buffered input */
    if (n == max) continue;
    pf[n].fd = fl_net_fd(c->n);
    pf[n].events = (short)fl_net_events(c->n);
    if (c->ready) {
      pf[n].events |= POLLIN;
      if (c->outpos < c->outlen) pf[n].events |= POLLOUT;
    }
    pf[n].revents = 0;
    c->pfi = n++;
  }
  return n;
}

/* move c on: connect, write, read; -1 when it failed */
static int conn_step(rn_io *io, rn_conn *c) {
  char buf[4096];
  long k;
  void *r;
  if (!c->ready) {
    int st = fl_net_step(c->n);
    if (st == FL_ERR) return -1;
    if (st != FL_DONE) return 0;
    c->ready = 1;
  }
  while (c->outpos < c->outlen) {
    if ((k = fl_net_send(c->n, c->out + c->outpos, c->outlen - c->outpos)) < 0) return -1;
    if (k == 0) break;
    c->outpos += (size_t)k;
  }
  if (c->outpos == c->outlen) c->outpos = c->outlen = 0;
  while ((k = fl_net_recv(c->n, buf, sizeof buf)) > 0) {
    if (redisReaderFeed(c->rd, buf, (size_t)k) != REDIS_OK) return -1;
    for (;;) {
      int bad;
      if (redisReaderGetReply(c->rd, &r) != REDIS_OK) return -1;
      if (!r) break;
      bad = on_reply(io, c, r);
      freeReplyObject(r);
      if (bad) return -1;
    }
  }
  return k < 0 ? -1 : 0;
}

void rn_io_step(rn_io *io, const struct pollfd *pf, int n) {
  rn_conn *c = io->conns, *next;
  long long now = rn_mono();
  for (; c; c = next) {
    next = c->next; /* c may be closed; a MOVED may add one in front */
    if (c->pfi >= 0 && c->pfi < n && (pf[c->pfi].revents & (POLLERR | POLLNVAL))) {
      conn_fail(io, c);
      continue;
    }
    if (conn_step(io, c) != 0 || (c->deadline && now >= c->deadline)) conn_fail(io, c);
  }
}

/* close the idle connections no live entry targets any more */
void rn_io_sweep(rn_io *io, fl_renewal **live, int nlive) {
  rn_conn *c = io->conns, *next;
  for (; c; c = next) {
    int i, j, used = c->head != NULL;
    next = c->next;
    for (i = 0; i < nlive && !used; i++)
      for (j = 0; j < live[i]->ntargets && !used; j++)
        used = same_target(&c->o, &live[i]->targets[j]);
    for (i = 0; i < nlive && !used; i++)
      for (j = 0; j < live[i]->nsentinels && !used; j++)
        used = same_target(&c->o, &live[i]->sentinels[j]);
    if (!used) conn_fail(io, c);
  }
}

void rn_io_free(rn_io *io) {
  while (io->conns) conn_fail(io, io->conns);
}
