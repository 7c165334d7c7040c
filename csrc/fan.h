/*
 * fan.h: the strategy layer.  One request of a pool (obtain, wait, release,
 * ttl, refresh, call) is a fan of legs, one per server asked, all in flight
 * at once (fan.c builds and steps them, drive.c waits for them).  What a
 * pool kind changes (which servers a key lives on, what a reply means, how
 * the legs' answers add up) is one table of functions, fl_kind (kind.h), in
 * one file per kind: kind_single.c (a single server is a one-leg group),
 * kind_redlock.c, kind_cluster.c, kind_sentinel.c.
 */
#ifndef FLUXALOCK_FAN_H
#define FLUXALOCK_FAN_H

#include "kind.h"

/* stack slots of every request (fan.c): 1..4 the method's arguments */
#define FAN_HOST 5 /* the host table, or nil */
#define FAN_LOCK 6 /* the Lock (a Call: its command words) */
#define FAN_SELF 7 /* the fan userdata */
#define FAN_UNDO 8 /* a failed Redlock obtain being undone: its message */

enum { LEG_IDLE, LEG_RUN, LEG_PAUSE, LEG_DONE, LEG_ERR, LEG_LATE };

typedef struct fl_leg {
  fl_pool *node;      /* borrowed: the group (or, single, the fan) holds it */
  fl_req *c;         /* its request while it runs, or its failure's */
  double resume;      /* LEG_PAUSE: when to try again */
  double until;       /* TRYAGAIN is retried until then */
  long long n;        /* the integer reply */
  const char *err;    /* LEG_ERR: in c's message while c is kept, else static */
  redisReply *reply;  /* a call's reply, owned until the verdict takes it */
  unsigned char st, hops, asking, tries, fallbacks;
  unsigned char code; /* LEG_ERR: what failed (FL_E_*) */
} fl_leg;

/* (small types: a fan lives as long as its request, one per coroutine) */
typedef struct fl_fan {
  fl_pool *g;         /* one reference while a userdata fan runs */
  const struct fl_kind *ops;
  const char *lkey;   /* the full key (prefix + key), anchored on the stack */
  const char *token;  /* the lock's, anchored with it */
  const fl_cmd *call; /* FL_OP_CALL: the command (words anchored) */
  /* FL_OP_CALL: NULL, or who judges its raw reply (or its failure: r
     NULL, the message and FL_E_* code) before it is returned: a Sentinel
     discovery round (sentinel.c), whose rules need the reply as Redis sent it */
  void (*judge)(void *ctx, const redisReply *r, const char *err, int code);
  void *judgectx;
  const fl_lock *mode; /* a lock in a mode (modes.c builds its commands) */
  fl_lock *hand;      /* a release's hand-over: the next waiter's lock (llock.c) */
  size_t lkeylen;
  long long ms;       /* obtain, refresh: the ttl; a wait: its seconds, in ms */
  double limit, start;
  unsigned keyat;     /* the user's key is lkey + keyat (a call: its word) */
  unsigned char op, op0; /* op becomes RELEASE for an undo; op0 is asked */
  unsigned char phase, nlegs, hidx;
  unsigned char poolidx;   /* the Pool userdata's stack index */
  unsigned char recovered; /* the recover function was called */
  unsigned char undo_errs; /* a failed obtain being undone: its errors */
  unsigned char undo_code; /* and its failure's code */
  unsigned char unacked;   /* a node set it but its replicas did not confirm */
  unsigned char replace;
  unsigned char onstack;   /* in a plain script's C stack, not a userdata */
  fl_leg legs[];      /* nlegs of them: the userdata is sized to fit */
} fl_fan;

#define FAN_KEY(f) ((f)->lkey + (f)->keyat)
#define FAN_KEYLEN(f) ((f)->lkeylen - (f)->keyat)

/* fan.c */
const char *fl_opname(int op);
void fl_leg_start(fl_fan *f, fl_leg *l);
void fl_leg_fail(fl_leg *l, int code, const char *fmt, ...);
void fl_leg_step(fl_fan *f, fl_leg *l, double now);
void fl_fan_restart(fl_fan *f, int op);
int fl_fan_failure(lua_State *L, const fl_fan *f, int errs, const char *first, int code);
int fl_fan_undo(lua_State *L, fl_fan *f, int errs, const char *first, int code);
int fl_verdict_one(lua_State *L, fl_fan *f);

/* room for a fan of a plain script on the C stack (see fl_fan_new) */
typedef union fl_fan_room {
  long double ld;
  void *p;
  long long ll;
  char bytes[sizeof(fl_fan) + FL_MAXNODES * sizeof(fl_leg)];
} fl_fan_room;
fl_fan *fl_fan_new(lua_State *L, fl_pool *g, int op, int pooludx, const char *lkey,
                   size_t lkeylen, fl_fan_room *room);
void fl_fan_start(fl_fan *f);
void fl_fan_end_legs(fl_fan *f);
void fl_fan_abandon(fl_fan *f);
void fl_fan_release(fl_fan *f);
void fl_fan_defer(fl_lock *lk);
void fl_fan_drop(fl_lock *lk);

/* drive.c: the requests, run to their answer */
int fl_drive_obtain(lua_State *L, fl_lock *lk, lua_Integer ms);
int fl_drive_await(lua_State *L);
int fl_drive_lock(lua_State *L, int op);
int fl_drive_call(lua_State *L, const fl_cmd *cmd, fl_sdisc *judge);

#endif
