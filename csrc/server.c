/*
 * fl_pool: the options and connections of one Redis server (or, for a
 * group, its nodes: group.c), reference counted; the Pool userdata is
 * lpool.c's.
 *
 * A pool opens at most max_connections links (conn_io.c) to its server and
 * pipelines the requests of any number of coroutines over them.  A plain
 * script has one request at a time, so it uses one.  A release that __gc
 * could not send waits in the pool's list of deferred releases, sent in
 * front of the next request (conn.c) or by fl_pool_flush (under a host
 * without waiting for the answers: the loop must never stall).
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "fluxalock.h"
#include "net.h"

/* ---- the C object ---------------------------------------------------------- */

fl_pool *fl_pool_ref(fl_pool *p) {
  p->refs++;
  return p;
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
    fl_req *c = p->allreqs;
    p->allreqs = c->nextall;
    fl_req_free(c);
  }
  free(p->wakes);
  for (i = 0; i < p->group.nnodes; i++) fl_pool_unref(p->group.nodes[i]); /* a group's */
  free(p->group.nodes);
  free(p->group.slots);
  fl_sentinels_free(p->group.sentinels);
  fl_rcounts_unref(p->rcounts);
  fl_opts_free(&p->o);
  free(p);
}

/* a request object (free, or a new one): requests are cheap, links are not */
fl_req *fl_pool_conn(fl_pool *p) {
  fl_req *c = p->freereqs;
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
  c->orphan = 0;
  c->resend = 0;
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
  d->mode = 0;
  d->next = p->pending;
  p->pending = d;
}

/* an open link of p with nothing in flight, or NULL */
static fl_link *ready_link(const fl_pool *p) {
  int i;
  for (i = 0; i < p->nlinks; i++)
    if (p->links[i]->state == FL_LK_READY && fl_link_idle(p->links[i])) return p->links[i];
  return NULL;
}

/* send deferred releases now: in a plain script blocking (bounded by the
   pool's timeouts).  Under a host nothing may wait outside the loop: they
   are written to an open idle link without waiting for their answers (a
   ghost entry drops them), or stay queued for the next request when no
   link is open; a pool going away then leaves them to their ttl */
void fl_pool_flush(fl_pool *p) {
  fl_req *c;
  if (!p->pending || !pool_quiet(p)) return;
  if (p->has_host && !ready_link(p)) return;
  if (!(c = fl_pool_conn(p))) return;
  c->cmd.argc = 0;
  c->cmd.script = -1;
  fl_cmd_arg(&c->cmd, "PING", 4);
  if (fl_req_begin(c, "release", 0) != FL_ERR) {
    if (p->has_host) fl_link_send(c->link); /* what the socket takes now */
    else fl_req_block(c);
  }
  fl_req_end(c);
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

/* ---- renewal counters ------------------------------------------------------- */

/* (atomic: the renewal thread's entries hold references too, renew.c) */
void fl_rcounts_unref(fl_rcounts *c) {
  if (c && __atomic_add_fetch(&c->refs, -1, __ATOMIC_ACQ_REL) == 0) free(c);
}

/* the renewals of p's locks so far, and the locks they found lost */
void fl_renew_counts(fl_pool *p, long long *renewed, long long *lost) {
  fl_rcounts *c = p ? p->rcounts : NULL;
  *renewed = c ? __atomic_load_n(&c->renewed, __ATOMIC_ACQUIRE) : 0;
  *lost = c ? __atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) : 0;
}
