/*
 * fluxalock: shared declarations of the C core.
 *
 * The layers of the core, and which may call which: docs/internals.md (its
 * table is what tools/checks/layers.sh checks).
 *
 * Ownership: fl_pool is malloc'd and reference counted.  The Pool userdata
 * holds one reference, every Lock holds one, so garbage-collection order and
 * lua_close can never leave a Lock with a dangling pool.
 */
#ifndef FLUXALOCK_H
#define FLUXALOCK_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <lua.h>
#include <lauxlib.h>

#define FL_POOL_MT "fluxalock.Pool"
#define FL_LOCK_MT "fluxalock.Lock"

#define FL_TOKEN_LEN 40 /* 128 random bits as hex, then 8 hex digits that
                           mark it fluxalock's (token.c) */
#define FL_TOKEN_RANDOM 32
#define FL_ERRLEN 1024
#define FL_MAXARGS 12 /* a mode obtain: 6 keys, 6 arguments */

/* results of one engine step */
enum { FL_DONE = 0, FL_WAIT = 1, FL_ERR = 2, FL_LATE = 3 };

/* what a runtime failure was (API.md "Errors a program can branch on"):
   carried beside each message, a string only at the Lua boundary (codes.c) */
enum { FL_E_NONE, FL_E_CONNECT, FL_E_TIMEOUT, FL_E_IO, FL_E_AUTH, FL_E_TLS, FL_E_SERVER,
       FL_E_REPLICAS, FL_E_QUORUM, FL_E_LIMIT, FL_E_LOST, FL_E_NOT_OBTAINED };
const char *fl_code_name(int code);

/* the scripts, indexes into fl_scripts[] */
enum { FL_S_OBTAIN, FL_S_RELEASE, FL_S_TTL, FL_S_REFRESH,
       FL_S_MOBTAIN, FL_S_MRELEASE, FL_S_MTTL, FL_S_MREFRESH, FL_S_INSPECT, /* modes.c */
       FL_S_HANDOVER, FL_NSCRIPTS };

typedef struct fl_script {
  const char *name;
  const char *body;
  char sha[41];
} fl_script;

extern fl_script fl_scripts[FL_NSCRIPTS];

/* one command; argv points at memory that outlives the request (the Lua
   stack of the calling method, or the Lock userdata) */
typedef struct fl_cmd {
  int argc;
  int script; /* -1, or FL_S_*: argv[0..2] are EVALSHA sha nkeys */
  const char *argv[FL_MAXARGS + 3];
  size_t argvlen[FL_MAXARGS + 3];
} fl_cmd;

typedef struct fl_pending { /* a release deferred by __gc */
  struct fl_pending *next;
  size_t keylen, wakelen;
  unsigned char mode; /* of a lock in a mode (modes.c), else 0 */
  char token[FL_TOKEN_LEN];
  char *key, *wake; /* in the same allocation */
} fl_pending;

typedef struct fl_opts {
  char *host;     /* NULL when path is set */
  int port;
  char *path;     /* unix socket */
  int db;
  char *username; /* may be NULL */
  char *password; /* may be NULL; never printed */
  double connect_timeout, timeout; /* seconds */
  char *prefix;
  size_t prefixlen;
  int prefix_tagged; /* the prefix holds a hash tag of its own */
  int cluster;       /* companion keys must share the lock key's slot */
  int replicas;      /* > 0: obtain/refresh wait for this many replicas */
  double replica_timeout; /* seconds, for that WAIT */
  char where[256];   /* "host:port" or "unix:path", for messages */
  struct fl_tls *tls; /* NULL, or TLS settings (one reference: net.h) */
} fl_opts;

/* a Sentinel pool's sentinels (kind_sentinel.c makes them, sentinel.c has
   the rules of asking them; the renewal thread keeps a deep copy) */
typedef struct fl_sentinels {
  char *master;  /* the name they monitor */
  int n;         /* of o[] made */
  int last;      /* the one that answered last: a round starts there */
  fl_opts *o;    /* each sentinel's options */
} fl_sentinels;

/* a request: one coroutine's command(s) queued on a shared link */
enum { FL_RQ_IDLE, FL_RQ_QUEUED, FL_RQ_DONE, FL_RQ_ERR };

typedef struct fl_req {
  struct fl_pool *pool;
  struct fl_link *link; /* where it is queued (kept after the end, for
                           fl_req_disconnect) */
  struct fl_req *nextfree, *nextall;
  void *wkey;          /* what its coroutine parks on: itself, or a fan */
  unsigned h;          /* its key's hash: which link (conn_io.c fl_link_for) */
  int expect;          /* replies still to come, main one last */
  int pending;         /* of them, deferred releases / ASKING first */
  short events;        /* when FL_WAIT: POLLIN/POLLOUT */
  unsigned char state; /* FL_RQ_* */
  unsigned char busy;  /* begun and not yet ended */
  unsigned char retried;  /* NOSCRIPT fallback done */
  unsigned char orphan;   /* an obtain: given up before its answer, its
                             release follows it (conn.c orphan_release) */
  unsigned char resend;   /* an obtain a majority did without: it goes
                             once more as EVAL behind (conn.c send_again) */
  unsigned char connwait; /* its deadline is the link's connect time */
  unsigned char asking;   /* send ASKING before the command (cluster ASK) */
  unsigned char post;     /* a WAIT for replicas follows the main command */
  unsigned char code;     /* FL_RQ_ERR: what failed (FL_E_*) */
  long long acked;     /* replicas that acknowledged (WAIT's answer) */
  double deadline;     /* monotonic seconds */
  double extra;        /* seconds the command may block server-side */
  double limit;        /* 0, or a hard deadline that ends the request
                          quietly with FL_LATE (a wait that must not
                          outlive its obtain) */
  double t0;           /* when the request began (for the debug log) */
  const char *op;      /* "obtain", "release", ... for messages */
  fl_cmd cmd;
  redisReply *reply;   /* main reply once FL_DONE, owned by the request */
  char num[1][32];     /* the numeric argument of the request */
  char *scratch;       /* companion key while the command is built (freed
                          once fl_req_begin copied the arguments) */
  size_t scratchcap;
  char *args;          /* the command's arguments, owned (conn.c own_args) */
  size_t argcap;
  char *err;           /* FL_RQ_ERR: the message (fl_req_errmsg), malloc'd
                          to its length when it failed; NULL, or the static
                          fallback when that malloc failed */
} fl_req;

/* one socket shared by many requests: a FIFO of entries, replies matched
   in order (conn.c) */
typedef struct fl_entry {
  fl_req *c;  /* NULL: its request gave up; 'ghost' replies are dropped */
  int ghost;
  unsigned h;  /* its key's hash (fl_link.keys) */
} fl_entry;

typedef struct fl_link {
  struct fl_pool *pool;
  struct fl_net *net;  /* NULL while closed */
  redisReader *rd;
  int state;           /* FL_LK_* */
  int handshake;       /* AUTH/SELECT replies still due */
  int doomed;          /* the server will close it: no new requests */
  int ever;            /* connected before: a connect is a reconnect */
  int events;          /* what the transport waits for */
  /* a subscription (wake.c): every reply is a message for on_message, and
     on_ready subscribes again after each connect; NULL for request links */
  void (*on_ready)(struct fl_link *k);
  void (*on_message)(struct fl_link *k, redisReply *r);
  void *ctx;           /* theirs (wake.c: the fl_sub) */
  int watched;         /* a waiter outside the FIFO waits on the socket */
  int efd;             /* with eopen: the epoll descriptor a host waits on
                          (conn_io.c fl_link_hostfd) */
  int esock, eevents;  /* the descriptor it watches (-1: none), for what */
  unsigned char eopen;
  unsigned gen;        /* the pool's target generation at connect */
  char *out;           /* RESP bytes not yet sent */
  size_t outlen, outpos, outcap;
  fl_entry *q;         /* ring of entries */
  int qhead, qlen, qcap;
  fl_req *reader;     /* the request whose coroutine waits on the fd */
  double rdl;          /* until when the reader waits */
  double progress;     /* last time the link moved (a reply, or work queued) */
  unsigned keys[64];   /* entries queued, by key hash mod 64: never more
                          than qlen (an int), so they cannot wrap (an
                          unsigned short did at 65536 queued requests of
                          one key, and the next one took another link) */
} fl_link;

enum { FL_LK_CLOSED, FL_LK_CONNECTING, FL_LK_READY };

/* what only C sees, counted with plain increments (stats.c reads them);
   a group's node pools count their own reconnects */
typedef struct fl_counts {
  long long released, lost, refreshed, errors, reconnects;
} fl_counts;

/* What makes a pool a group (group.c): a Redlock, Cluster or Sentinel
   pool's locks live on its nodes, each a pool of one server, not on a
   server of its own.  A pool of one server has none of it (all zero) */
typedef struct fl_group {
  struct fl_pool **nodes;  /* one reference each */
  int nnodes, nodecap;
  unsigned short *slots;   /* Cluster: node index + 1 per hash slot */
  unsigned long moved, asked, rotate;
  fl_sentinels *sentinels; /* Sentinel: the sentinels' options, else NULL */
} fl_group;

typedef struct fl_pool {
  int refs;
  int has_host;  /* waits go through a Lua host function */
  unsigned gen;  /* bumped by retarget: older connections are dropped */
  fl_opts o;
  fl_link **links;
  int nlinks, linkcap;
  int maxconn;   /* max_connections */
  int has_park;  /* the host can park and unpark coroutines */
  fl_req *freereqs, *allreqs;
  void **wakes;  /* park keys to unpark at the next chance (conn.c) */
  int nwakes, wakecap;
  struct fl_sub *sub; /* the wake-up subscription, or NULL (wake.c) */
  fl_pending *pending;
  const struct fl_kind *ops; /* what its kind does (fan.h) */
  fl_group group;  /* a group's nodes; all zero in a pool of one server */
  struct fl_rcounts *rcounts; /* renewal counters, shared with the renewal
                               thread's entries (renew.c); NULL until the
                               first renewed lock */
  int has_log;   /* uservalue 3 of the Pool userdata is a log function */
  fl_counts n;
} fl_pool;

/* the renewal counters of a pool's renewed locks, shared by the pool and
   the renewal thread's entries (renew.c); freed by the last reference */
typedef struct fl_rcounts {
  int refs;                 /* atomic: the pool's and one per entry */
  long long renewed, lost;  /* atomic */
} fl_rcounts;

#define FL_MAXNODES 16 /* of a Redlock group */
/* a coroutine that reads a shared socket for others (a link's reader, the
   subscription's) and is not back this long after its wait: abandoned */
#define FL_READER_GRACE 0.05

typedef struct fl_lock {
  fl_pool *pool;    /* one reference, dropped by __gc */
  long long fence;  /* from the fence counter at obtain */
  size_t keylen;    /* of key[]: prefix + user key */
  size_t prefixlen;
  int held;         /* cleared before the release is sent (liolib habit) */
  struct fl_renewal *renew; /* NULL, or its renewal entry (one reference) */
  unsigned char mode; /* 0 (a plain lock), or 'l', 's', 'x', 'p' (modes.c) */
  unsigned char act;  /* a mode obtain's action: '0' try, '1' queue, '2' leave */
  char limit[8];      /* a mode's limit, as the script's argument */
  char token[FL_TOKEN_LEN];
  char key[1];      /* prefix + key + NUL; the userdata is sized to fit */
} fl_lock;

/* opts.c */
void fl_opts_free(fl_opts *o);
int fl_opts_copy(fl_opts *dst, const fl_opts *src);
void fl_sentinels_free(fl_sentinels *s);
fl_sentinels *fl_sentinels_copy(const fl_sentinels *s);

/* clock.c: CLOCK_BOOTTIME where there is one, else CLOCK_MONOTONIC */
double fl_now(void);
long long fl_now_ns(void);
const char *fl_clock_name(void); /* "boottime" or "monotonic" */
int fl_poll_ms(double seconds);  /* a poll(2) timeout, 0 to an hour */

/* conn.c: requests */
void fl_req_free(fl_req *c);
void fl_req_disconnect(fl_req *c);
void fl_req_detach(fl_req *c);
int fl_req_fd(const fl_req *c);
int fl_req_claim(fl_req *c, double now, double left);
void fl_req_unclaim(fl_req *c);
int fl_req_begin(fl_req *c, const char *op, double extra);
int fl_req_step(fl_req *c);
void fl_req_end(fl_req *c);
int fl_req_timeout(fl_req *c);
const char *fl_req_errmsg(const fl_req *c);
void fl_req_setmsg(fl_req *c, const char *msg);

/* conn_io.c: links */
void fl_link_free(fl_link *k);
void fl_link_close(fl_link *k, const char *why);
int fl_link_idle(const fl_link *k);
void fl_link_send(fl_link *k);
int fl_link_wait(fl_link *k, void *self, double left);
int fl_link_hostfd(fl_link *k, int events);
void fl_reader_cap(redisReader *r);

int fl_req_block(fl_req *c);

/* drive.c */
void fl_wake_flush(lua_State *L, fl_pool *p, int hostidx);

/* wake.c: one subscription per pool to the wake-up channels of its waiters */
void fl_sub_free(fl_pool *p);
void fl_sub_open(lua_State *L);

/* server.c */
fl_pool *fl_pool_ref(fl_pool *p);
void fl_pool_unref(fl_pool *p);
fl_req *fl_pool_conn(fl_pool *p);
void fl_pool_defer(fl_pool *p, const char *key, size_t keylen,
                   const char *wake, size_t wakelen, const char *token);
void fl_pool_flush(fl_pool *p);
void fl_pool_close_idle(fl_pool *p);
void fl_rcounts_unref(fl_rcounts *c);
void fl_renew_counts(fl_pool *p, long long *renewed, long long *lost);

/* lpool.c: the Pool userdata holds one reference, NULL once closed */
int fl_pool_open(lua_State *L);
typedef struct fl_pool_ud {
  fl_pool *p;
} fl_pool_ud;

static inline fl_pool *fl_checkpool(lua_State *L, int idx) {
  fl_pool_ud *u = luaL_checkudata(L, idx, FL_POOL_MT);
  if (!u->p) luaL_argerror(L, idx, "pool is closed");
  return u->p;
}

/* group.c: the group object of a Redlock, Cluster or Sentinel pool; the
   kinds' own Pool methods */
void fl_group_close(fl_pool *p);
int fl_group_fresh(const fl_pool *g);
int fl_group_add(fl_pool *g, fl_pool *n);
void fl_group_add_pool(lua_State *L, fl_pool *g, int idx);
int fl_group_node(fl_pool *g, const char *host, int port);
int fl_group_info(lua_State *L);
int fl_group_redirects(lua_State *L);
int fl_cluster_setslots(lua_State *L);
int fl_sentinel_setrecover(lua_State *L);
int fl_sentinel_discovery(lua_State *L);
int fl_sentinel_pool(lua_State *L);
enum { FL_OP_OBTAIN, FL_OP_AWAIT, FL_OP_RELEASE, FL_OP_CLOSE, FL_OP_TTL, FL_OP_REFRESH,
       FL_OP_CALL };

/* llock.c */
fl_lock *fl_lock_new(lua_State *L, int poolidx, fl_pool *p, const char *key,
                     size_t keylen);
lua_Integer fl_checkms(lua_State *L, int arg, const char *what);
int fl_lock_open(lua_State *L);
#define FL_NOTIFY "fluxalock.notify" /* registry: core.setnotify's function */
#define FL_HANDOVER "fluxalock.handover" /* registry: core.sethandover's */

/* renew.c: the renewal thread (its own connections, never the Lua state) */
int fl_renew_start(lua_State *L);  /* core.renew(lock, ttl_ms, every_ms, sent_at) */
int fl_renew_fd(lua_State *L);     /* core.renewal_fd() */
void fl_renew_stop(fl_lock *lk);   /* before a release is sent; idempotent */
void fl_renew_drop(fl_lock *lk);   /* __gc: stop, drop the lock's reference */
int fl_renew_held(const fl_lock *lk); /* the renewal still vouches for it */
int fl_renew_foreign(const fl_lock *lk); /* renewed by another process (fork) */
int fl_renew_found_lost(const fl_lock *lk); /* counted lost by the thread */
int fl_renew_stopped(const fl_lock *lk); /* released, collected, or another
                                            process's: never to be told lost */
long long fl_renew_lost_seq(void); /* locks found lost so far (lost.c) */
/* lost.c: on_lost, lost_fd, dispatch (API.md "Lost leases, told") */
void fl_lost_tell(lua_State *L);
void fl_lost_open(lua_State *L);
/* stats.c */
void fl_notify(lua_State *L, int lockidx);
int fl_done(lua_State *L, fl_pool *p, fl_lock *lk, int op, const char *key,
            size_t keylen, double t0, int nres, int pud);
void fl_stats_open(lua_State *L);

/* token.c */
int fl_token(char out[FL_TOKEN_LEN]);
void fl_sha1_hex(const char *msg, char out[41]);
#define FL_WAKE_ID_LEN 16
const char *fl_wake_id(void); /* this process's id in its releases' messages */

/* modes.c: semaphores, shared holds, fair order (docs/modes.md) */
struct fl_fan;
int fl_mode_read(lua_State *L, int idx, fl_lock *lk);
int fl_mode_cmd(const struct fl_fan *f, fl_req *c);
char *fl_mode_pending(fl_req *c, const fl_pending *d, fl_cmd *cmd);
char *fl_mode_hkey(const fl_opts *o, const fl_lock *lk, size_t *len);
void fl_mode_open(lua_State *L);

/* keys.c */
unsigned fl_slot(const char *key, size_t len);
int fl_redirect_parse(const char *msg, const char *from, unsigned *slot, char *host,
                      size_t hostcap, int *port);
const char *fl_companion(fl_req *c, const char *key, size_t keylen,
                         const char *what, int withkey, size_t *len);
char *fl_companion_dup(const fl_opts *o, const char *key, size_t keylen,
                       const char *what, size_t *len);
void fl_scripts_init(void);
void fl_cmd_script(fl_cmd *cmd, int script, int nkeys);
void fl_cmd_arg(fl_cmd *cmd, const char *s, size_t len);
void fl_cmd_obtain(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                   const char *fence, size_t fencelen, const char *token, long long ms);
void fl_cmd_handover(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                     const char *fence, size_t fencelen, const char *old,
                     const char *token, long long ms);
void fl_cmd_release(fl_cmd *cmd, const char *key, size_t keylen,
                    const char *wake, size_t wakelen, const char *token);
void fl_cmd_ttl(fl_cmd *cmd, const char *key, size_t keylen, const char *token);
void fl_cmd_refresh(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                    const char *token, long long ms, int replace);
void fl_cmd_await(fl_cmd *cmd, char num[32], const char *wake, size_t wakelen,
                  double secs);

#endif
