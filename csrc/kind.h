/*
 * kind.h: a pool kind is one table of functions (fl_kind), in one file per
 * kind; fan.c and drive.c run every request through it, and nothing else
 * asks which kind a pool is.  The renewal thread (renew.c) reads nodes()
 * when a renewed lock is registered.
 */
#ifndef FLUXALOCK_KIND_H
#define FLUXALOCK_KIND_H

#include "fluxalock.h"

struct fl_fan;
struct fl_leg;

typedef struct fl_kind {
  const char *name;
  int fence;          /* lock:fence() means something on this kind */
  int call;           /* pool:call() is allowed */
  /* pool:group(kind, nodes at 3): build the group; raises on misuse */
  void (*setup)(lua_State *L, fl_pool *g, int n);
  /* the servers the lock of the full key lkey lives on (<= FL_MAXNODES) */
  int (*nodes)(fl_pool *g, const char *lkey, size_t len, fl_pool **out);
  /* a wait asks one server: which */
  fl_pool *(*await_node)(fl_pool *g, const char *lkey, size_t len);
  /* a leg's reply came; 1 when the kind took it (a redirect, a pause) */
  int (*on_reply)(struct fl_fan *f, struct fl_leg *l, const redisReply *r);
  /* a leg's connection failed; 1 when it was started on another node */
  int (*fallback)(struct fl_fan *f, struct fl_leg *l);
  /* after each step: legs still running that cannot change the answer */
  void (*settle)(struct fl_fan *f);
  /* the answer of a finished fan, pushed; -1 when another round started */
  int (*verdict)(lua_State *L, struct fl_fan *f);
  /* 1 when the pool's recover function should be called, then the fan
     started again (it is pushed on the stack) */
  int (*recover)(lua_State *L, struct fl_fan *f);
} fl_kind;

extern const fl_kind fl_kind_single, fl_kind_redlock, fl_kind_cluster, fl_kind_sentinel;

#endif
