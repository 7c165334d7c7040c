/*
 * Private to renew.c and renew_io.c: a renewal entry and the renewal
 * thread's connections.  See renew.c for the design and its safety story.
 */
#ifndef FLUXALOCK_RENEW_H
#define FLUXALOCK_RENEW_H

#include <poll.h>

#include "fluxalock.h"
#include "kind.h"

#define RN_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define RN_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define RN_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)

/* entry states: RUN -> STOPPED (release, __close, __gc) or RUN -> LOST
   (not the owner, or its local deadline passed); never back to RUN */
enum { RN_RUN = 0, RN_STOPPED = 1, RN_LOST = 2 };

/* the outcome of one leg (one node asked once) */
enum { LEG_IDLE, LEG_QUEUED, LEG_OK, LEG_NOTOWNER, LEG_ERR };

/* what a leg asks: the refresh, or the question of its entry's Sentinel
   discovery round (e->disc: a sentinel, or ROLE at e->cand) */
enum { RQ_REFRESH, RQ_DISCOVER };

typedef struct rn_leg {
  struct fl_renewal *e;
  int ti;           /* index into e->targets */
  int st;           /* LEG_* */
  int hops;         /* MOVED redirects followed in this attempt */
  int query;        /* RQ_REFRESH, or RQ_DISCOVER: one question after
                       another until e->disc's round ends; a master found
                       retargets targets[0] there */
  fl_req *c;       /* its request while LEG_QUEUED (conn.c) */
  struct rn_leg *qnext; /* the legs in flight (rn_io.flight) */
} rn_leg;

typedef struct fl_renewal {
  /* shared with the Lua thread: atomics only */
  int refs;            /* the Lock's and the registry's */
  int state;           /* RN_* */
  long long deadline;  /* monotonic ns: held() is false from then on */
  /* set before the entry is handed over, then read-only */
  fl_rcounts *counts;
  long pid;            /* the process that obtained and renews it */
  char *key;           /* prefix + key */
  size_t keylen;
  char *hkey;          /* a lock in a mode: its holders' key (modes.c), or NULL */
  size_t hkeylen;
  char token[FL_TOKEN_LEN];
  char ttlarg[24];     /* ttl in ms, as the script's argument */
  long long ttl_ns, every_ns, margin_ns;
  int ntargets, quorum;
  /* the renewal thread's own from hand-over on */
  fl_opts targets[FL_MAXNODES]; /* deep copies; MOVED rewrites host/port */
  fl_sentinels *sentinels; /* a Sentinel pool's (a copy), or NULL */
  int asking;          /* the next attempt is a discovery round */
  fl_sdisc disc;       /* its round (sentinel.c has the rules) */
  fl_opts cand;        /* the master a sentinel named, until ROLE confirms
                          it (host NULL: none) */
  rn_leg legs[FL_MAXNODES];
  int inflight;        /* legs queued */
  int fails;           /* attempts in a row that confirmed nothing */
  long long due;       /* next attempt, monotonic ns */
  long long started;   /* send time of the attempt in flight */
} fl_renewal;

/* renew_io.c: the thread's servers, one fl_pool of its own per distinct
   target, and the legs in flight on them */
typedef struct rn_io {
  fl_pool **servers;
  int nservers, cap;
  rn_leg *flight;
} rn_io;

long long rn_mono(void);
void rn_leg_send(rn_io *io, rn_leg *l);
void rn_discover(rn_io *io, rn_leg *l);
int rn_io_fill(rn_io *io, struct pollfd *pf, int max, long long *wake_at);
void rn_io_step(rn_io *io, const struct pollfd *pf, int n);
void rn_io_sweep(rn_io *io, fl_renewal **live, int nlive);
void rn_io_free(rn_io *io);

#endif
