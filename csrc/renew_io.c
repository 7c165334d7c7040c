/*
 * The renewal thread's requests (renew.c has the design).
 *
 * Only the renewal thread runs this file, and it speaks to Redis through
 * the same request and link code as the Lua side (conn.c, conn_io.c): RESP,
 * the handshake (AUTH/SELECT), the NOSCRIPT retry and the WAIT for
 * 'replicas' exist once.  It never touches a pool of the Lua thread (those
 * are not thread-safe): it has one fl_pool of its own per distinct target
 * (host/port or socket, db, user), made from its own copy of the options,
 * with no host (nothing parks, nothing yields) and one link.  A leg (one
 * node asked once) is one request on that server; its reply is read here.
 *
 * A request that fails or times out fails its leg: the entries retry with
 * their own backoff until their local deadline.  Nothing here ever prints
 * a password, a token or a key.
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "renew.h"
#include "net.h"

#define MAX_HOPS 5 /* MOVED redirects per leg and attempt */

long long rn_mono(void) { return fl_now_ns(); } /* fl_now's clock (clock.c) */

static int streq(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

/* the same server, reached the same way (the same TLS settings: copies
   of a pool's options share its fl_tls) */
static int same_target(const fl_opts *a, const fl_opts *b) {
  return a->port == b->port && a->db == b->db && a->tls == b->tls && streq(a->host, b->host) &&
         streq(a->path, b->path) && streq(a->username, b->username) &&
         streq(a->password, b->password) && a->replicas == b->replicas;
}

/* ---- the thread's servers ------------------------------------------------ */

static fl_pool *server_for(rn_io *io, const fl_opts *o) {
  fl_pool *p;
  int i;
  for (i = 0; i < io->nservers; i++)
    if (same_target(&io->servers[i]->o, o)) return io->servers[i];
  if (io->nservers == io->cap) {
    int cap = io->cap ? 2 * io->cap : 8;
    fl_pool **a = realloc(io->servers, (size_t)cap * sizeof *a);
    if (!a) return NULL;
    io->servers = a;
    io->cap = cap;
  }
  if (!(p = calloc(1, sizeof *p))) return NULL;
  if (fl_opts_copy(&p->o, o) != 0) {
    free(p);
    return NULL;
  }
  p->refs = 1;
  p->maxconn = 1; /* every renewal to this server pipelined on one link */
  io->servers[io->nservers++] = p;
  return p;
}

static int server_busy(const fl_pool *p) {
  const fl_req *c;
  for (c = p->allreqs; c; c = c->nextall)
    if (c->busy) return 1;
  return 0;
}

static int targets_server(const fl_renewal *e, const fl_pool *p) {
  int j;
  for (j = 0; j < e->ntargets; j++)
    if (same_target(&p->o, &e->targets[j])) return 1;
  for (j = 0; e->sentinels && j < e->sentinels->n; j++)
    if (same_target(&p->o, &e->sentinels->o[j])) return 1;
  return e->cand.host && same_target(&p->o, &e->cand);
}

/* close the idle servers no live entry targets any more */
void rn_io_sweep(rn_io *io, fl_renewal **live, int nlive) {
  int i, j, k = 0;
  for (i = 0; i < io->nservers; i++) {
    fl_pool *p = io->servers[i];
    int used = server_busy(p);
    for (j = 0; j < nlive && !used; j++) used = targets_server(live[j], p);
    if (used) io->servers[k++] = p;
    else fl_pool_unref(p);
  }
  io->nservers = k;
}

/* ---- legs ---------------------------------------------------------------- */

static const fl_opts *leg_target(const rn_leg *l) {
  const fl_renewal *e = l->e;
  if (l->query == RQ_REFRESH) return &e->targets[l->ti];
  return e->disc.step == FL_SD_SENTINEL ? &e->sentinels->o[e->disc.cur] : &e->cand;
}

/* the command of leg l, into its request */
static void leg_cmd(rn_leg *l, fl_req *c) {
  const fl_renewal *e = l->e;
  c->cmd.argc = 0;
  c->cmd.script = -1;
  if (l->query == RQ_REFRESH && e->hkey) {
    /* a lock in a mode: its own refresh script, with its holders' key as
       KEYS[2] (modes.c); replace: the time left becomes the ttl */
    snprintf(c->num[0], sizeof c->num[0], "%lld", e->ttl_ns / 1000000LL);
    fl_cmd_script(&c->cmd, FL_S_MREFRESH, 2);
    fl_cmd_arg(&c->cmd, e->key, e->keylen);
    fl_cmd_arg(&c->cmd, e->hkey, e->hkeylen);
    fl_cmd_arg(&c->cmd, e->token, FL_TOKEN_LEN);
    fl_cmd_arg(&c->cmd, c->num[0], strlen(c->num[0]));
    fl_cmd_arg(&c->cmd, "1", 1);
  } else if (l->query == RQ_REFRESH) { /* replace: the time left becomes the ttl */
    fl_cmd_refresh(&c->cmd, c->num[0], e->key, e->keylen, e->token, e->ttl_ns / 1000000LL, 1);
  } else {
    fl_sdisc_cmd(&e->disc, &c->cmd); /* the discovery's question */
  }
}

static void leg_done(rn_io *io, rn_leg *l, int st) {
  rn_leg **pp = &io->flight;
  while (*pp && *pp != l) pp = &(*pp)->qnext;
  if (*pp) *pp = l->qnext;
  if (l->c) fl_req_end(l->c);
  l->st = st;
  l->c = NULL;
  l->qnext = NULL;
  l->e->inflight--;
}

/* l's request failed: a refresh's leg ends; a discovery's round judges
   the failure and goes on */
static void leg_failed(rn_io *io, rn_leg *l) {
  if (l->query == RQ_DISCOVER) {
    fl_sdisc_judge(&l->e->disc, NULL, l->c ? fl_req_errmsg(l->c) : "fluxalock: out of memory",
                   l->c ? l->c->code : FL_E_IO);
    leg_done(io, l, LEG_IDLE);
    rn_discover(io, l);
  } else {
    leg_done(io, l, LEG_ERR);
  }
}

/* send leg l to its target (its entry's inflight count goes up by one; it
   comes down when the leg ends, LEG_OK, LEG_NOTOWNER or LEG_ERR) */
void rn_leg_send(rn_io *io, rn_leg *l) {
  fl_pool *p = server_for(io, leg_target(l));
  l->e->inflight++;
  l->st = LEG_QUEUED;
  l->c = p ? fl_pool_conn(p) : NULL;
  l->qnext = io->flight;
  io->flight = l;
  if (!l->c) {
    leg_failed(io, l);
    return;
  }
  leg_cmd(l, l->c);
  if (fl_req_begin(l->c, l->query == RQ_REFRESH ? "renew" : "sentinel", 0) == FL_ERR) {
    leg_failed(io, l);
    return;
  }
  l->c->events = POLLOUT; /* not stepped yet: the first step writes */
}

/* point o at host:port; same credentials.  0, or -1 */
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

/* "MOVED <slot> <host>:<port>": the leg's target moves there (":port" is
   the host of the node that answered, fl_redirect_parse) */
static int moved(fl_opts *o, const char *msg) {
  char host[256];
  unsigned slot;
  int port;
  if (!o->host || !fl_redirect_parse(msg, o->host, &slot, host, sizeof host, &port)) return -1;
  return retarget(o, host, strlen(host), port);
}

/* e->cand: a copy of the master's options pointed at the address the
   round's sentinel named.  0, or -1 */
static int candidate(fl_renewal *e) {
  fl_opts_free(&e->cand);
  if (fl_opts_copy(&e->cand, &e->targets[0]) != 0) {
    memset(&e->cand, 0, sizeof e->cand);
    return -1;
  }
  return retarget(&e->cand, e->disc.host, strlen(e->disc.host), e->disc.port);
}

/* leg l (idle) asks the next question of its entry's discovery round, or
   ends with the round: LEG_OK once the master is found (targets[0] moves
   there), LEG_ERR when no sentinel named one */
void rn_discover(rn_io *io, rn_leg *l) {
  fl_renewal *e = l->e;
  if (e->disc.step == FL_SD_FOUND) {
    fl_opts_free(&e->targets[0]);
    e->targets[0] = e->cand;
    memset(&e->cand, 0, sizeof e->cand);
    l->st = LEG_OK;
  } else if (e->disc.step == FL_SD_FAILED) {
    l->st = LEG_ERR;
  } else if (e->disc.step == FL_SD_ROLE && candidate(e) != 0) {
    fl_sdisc_judge(&e->disc, NULL, "fluxalock: out of memory", FL_E_IO);
    rn_discover(io, l);
  } else {
    rn_leg_send(io, l);
  }
}

/* a refresh's reply: renewed (and, with 'replicas', acknowledged by that
   many: else it counts as failed, like a refresh's), not the owner, or a
   failure to retry.  A MOVED sends the leg on */
static void refresh_reply(rn_io *io, rn_leg *l, const redisReply *r) {
  fl_req *c = l->c;
  int want = c->pool->o.replicas;
  if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
    leg_done(io, l, want > 0 && c->acked < want ? LEG_ERR : LEG_OK);
  } else if (r->type == REDIS_REPLY_INTEGER) {
    leg_done(io, l, LEG_NOTOWNER);
  } else if (r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "MOVED ", 6) == 0 &&
             l->hops < MAX_HOPS && moved(&l->e->targets[l->ti], r->str) == 0) {
    l->hops++;
    leg_done(io, l, LEG_IDLE);
    rn_leg_send(io, l);
  } else {
    leg_done(io, l, LEG_ERR); /* READONLY, LOADING, ASK...: try again later */
  }
}

/* l's request ended (FL_DONE: its reply is in) */
static void leg_reply(rn_io *io, rn_leg *l) {
  const redisReply *r = l->c->reply;
  if (l->query == RQ_REFRESH) {
    refresh_reply(io, l, r);
  } else { /* the round judges it, then asks on or ends */
    fl_sdisc_judge(&l->e->disc, r, NULL, 0);
    leg_done(io, l, LEG_IDLE);
    rn_discover(io, l);
  }
}

/* ---- driving ------------------------------------------------------------- */

/* fill pf with what each leg's request waits for; *wake_at becomes the
   earliest reply deadline if sooner.  Returns the number of slots used */
int rn_io_fill(rn_io *io, struct pollfd *pf, int max, long long *wake_at) {
  rn_leg *l;
  int n = 0;
  long long mono = rn_mono();
  double now = fl_now();
  for (l = io->flight; l; l = l->qnext) {
    /* (a request's deadline is on fl_now()'s clock: counted from now) */
    long long dl = mono + (long long)((l->c->deadline - now) * 1e9);
    int fd = fl_req_fd(l->c);
    if (dl < *wake_at) *wake_at = dl;
    if (l->c->state != FL_RQ_QUEUED) *wake_at = 0; /* it ended: read it now */
    if (n == max) continue;
    pf[n].fd = fd;
    pf[n].events = (short)l->c->events;
    pf[n].revents = 0;
    n++;
  }
  return n;
}

/* move every leg's request on; the ones that ended are read */
void rn_io_step(rn_io *io, const struct pollfd *pf, int n) {
  rn_leg *l = io->flight, *next;
  (void)pf;
  (void)n; /* each request steps its own link, whatever poll said */
  for (; l; l = next) {
    int st = fl_req_step(l->c);
    next = l->qnext; /* a leg sent on is put in front: not seen again now */
    if (st == FL_WAIT && fl_now() >= l->c->deadline) st = fl_req_timeout(l->c);
    if (st == FL_DONE) leg_reply(io, l);
    else if (st == FL_ERR) leg_failed(io, l);
  }
}

void rn_io_free(rn_io *io) {
  int i;
  while (io->flight) leg_done(io, io->flight, LEG_ERR);
  for (i = 0; i < io->nservers; i++) fl_pool_unref(io->servers[i]);
  free(io->servers);
  io->servers = NULL;
  io->nservers = io->cap = 0;
}
