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

/* sentinel.c: Sentinel discovery, its rules once (no I/O).  A round
   (fl_sdisc) says what to ask next and judges each answer; the Lua side
   (kind_sentinel.c, through pool:call) and the renewal thread (renew_io.c)
   drive it with their own I/O */
enum { FL_SD_SENTINEL, FL_SD_ROLE, FL_SD_FOUND, FL_SD_FAILED };

typedef struct fl_sdisc {
  fl_sentinels *s; /* borrowed: its 'last' moves when a master is found */
  int step;        /* FL_SD_*: ask sentinel cur; ask ROLE at host:port;
                      found (the master is host:port); failed */
  int cur;         /* the sentinel asked (0-based) */
  int asked;       /* sentinels that failed so far in this round */
  int code;        /* the first failure's FL_E_* */
  int port;
  char host[200];  /* the address a sentinel named */
  char errs[FL_ERRLEN]; /* the failures, "; " between them */
  size_t len;
} fl_sdisc;

#define FL_SDISC_MT "fluxalock.Discovery" /* a round for the Lua side:
                                            its fl_sdisc first */

int fl_sentinels_add(fl_sentinels *s, const char *host, size_t len, int port,
                     const char *password, const fl_opts *like);
void fl_sdisc_start(fl_sdisc *d, fl_sentinels *s);
void fl_sdisc_cmd(const fl_sdisc *d, fl_cmd *cmd);
void fl_sdisc_judge(void *ctx, const redisReply *r, const char *err, int code);
int fl_sdisc_failure(const fl_sdisc *d, char *out, size_t cap);

#endif
