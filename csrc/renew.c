/*
 * Renewed locks: locker:obtain(key, ttl, wait, {renew = true | seconds}).
 *
 * A renewal thread (pthreads), started at the first renewed lock, refreshes
 * every renewed lock back to its full ttl every interval, whatever the Lua
 * program does meanwhile (busy in C, in os.execute, or in a host's loop).
 *
 * Entries.  A renewed lock has a malloc'd entry (renew.h) with copies of all
 * the thread needs: key (with prefix), token, ttl, interval, and deep copies
 * of its targets' connection options (fl_opts_copy).  Two references: the
 * Lock userdata's, the thread registry's; whoever drops the last frees it.
 * The Lua thread and the renewal thread share only atomics (refs, state,
 * deadline, the counters) and, under one mutex, the hand-over list.  The
 * thread never touches the Lua state, nor a pool or request of the Lua
 * thread: it has its own servers (fl_pool, without a host) and requests on
 * them, and drives them with the same code as the Lua side (renew_io.c).
 *
 * The local deadline.  deadline = send time of the last confirmed renewal
 * (first: of the obtain) + ttl - margin, from CLOCK_BOOTTIME (clock.c).  The server
 * set the expiry when it received the command, which is after we sent it,
 * so the key lives at least until send + ttl; the margin (ttl/100 + 2 ms,
 * Redlock's drift) covers a server clock running faster than ours and the
 * millisecond rounding of PEXPIRE.  held() is false from the deadline on
 * (it reads the atomics itself, so it is exact even if the thread is late),
 * and the thread marks the entry lost at the deadline (its poll wakes then),
 * not only at its next attempt.  "Not the owner" (the script answers 0) is
 * lost at once.  A transport error is retried with a backoff (25 ms
 * doubling to 400 ms, never more than the interval) until the deadline.
 * Lost is final: a later confirmation never revives it, and the thread
 * never obtains anything: no silent re-acquire.
 *
 * Stopping.  release, __close and __gc mark the entry STOPPED (an atomic
 * compare-and-swap from RUN) before the release is sent; the thread starts
 * no attempt for an entry that is not RUN.  A refresh already in flight can
 * still reach Redis after the release, but the refresh script only
 * PEXPIREs a key whose value is this lock's token (GET, compare, PEXPIRE in
 * one script): a released key is gone (PEXPIRE of a missing key creates
 * nothing) and a key another holder took carries another token, and a
 * token is never set again once its lock is released (each obtain draws a
 * fresh one).  So a late refresh can neither recreate a released lock nor
 * extend another holder's.
 *
 * GC and lua_close.  __gc stops the entry and drops the Lock's reference;
 * the thread drops the registry's at its next turn, closes the connections
 * no entry needs, and exits when it has no entry left (the next thread to
 * start joins it).  At process exit a destructor tells the thread to quit
 * at once and joins it: valgrind sees no thread and no block of ours left
 * (a lock still held then expires by its ttl, as if the process had been
 * killed; lua_close, which a normal end of lua5.4 runs, releases them
 * first).  lua_close
 * dlcloses C modules: at its first start the thread pins this module in
 * memory (dlopen RTLD_NODELETE), so a thread still finishing a request
 * never runs unmapped code.  Counters live in a small block shared by the
 * pool and its entries (reference counted like the entries).
 *
 * Pool kinds.  One server: its options.  Redlock: every node, at once; a
 * renewal counts when a quorum confirmed it within the validity window
 * (ttl - margin), and "not the owner" from more nodes than can be spared
 * is lost at once.  Cluster: the node of the key's slot at obtain; a MOVED
 * retargets it (renew_io.c; ":port" is the host of the node that
 * answered).  Sentinel: the master at obtain; after a failed renewal the
 * thread runs a discovery round of sentinel.c (the same rules as the Lua
 * side: the sentinels in turn from the one that answered last, SENTINEL
 * get-master-addr-by-name, believed once ROLE there says "master") on a
 * copy of the pool's sentinels, and retargets there.
 * The pool's 'replicas' option applies: each refresh is followed by WAIT
 * (conn.c), and one that too few replicas acknowledged has failed.
 *
 * Hosts.  Nothing yields or waits on the Lua side: under cqueues, luv or
 * an embedding program a renewed lock costs the loop nothing.  The thread
 * blocks every signal, so signals keep going to the program's threads.
 *
 * fork.  The renewal thread does not exist in a child.  A renewed lock
 * belongs to the process that obtained it (its entry records the pid): in a
 * child, held() is false and release/__close/__gc send nothing (the parent
 * still holds and renews it; a child's exit must not delete it).  A child
 * may obtain renewed locks of its own: it starts its own thread.  A
 * pthread_atfork child handler forgets the parent's thread and gives the
 * child its own pipes, on the same descriptor numbers.
 *
 * core.renewal_fd() (internal, for the fluxalock command): the read end of
 * a pipe (non-blocking, close-on-exec) that gets one byte each time a
 * renewed lock becomes lost.
 */
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE, pipe2, dup3 */
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "renew.h"
#include "kind.h"
#include "net.h"

typedef struct thr {      /* one run of the renewal thread */
  rn_io io;
  fl_renewal **live;
  int nlive, cap;
  struct pollfd *pf;
  int npf;
} thr;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static fl_renewal **incoming; /* handed over, not yet taken (under mu) */
static int nincoming, capincoming;
static int running;           /* a thread runs (under mu) */
static pthread_t last;        /* the latest thread, joined by the next one */
static int joinable;          /* and at exit (under mu) */
static int quit;              /* atomic: exit now (the process is exiting) */
static thr *cur;              /* its state, for a fork child (under mu) */
static int wk[2] = {-1, -1};  /* wakes the thread */
static int note[2] = {-1, -1}; /* renewal_fd: a byte per lost lock */
static int set_up;
static void *volatile orphan[2]; /* a fork child keeps the parent's state
                                 reachable, never touching it; volatile, or
                                 the compiler drops these never-read stores
                                 and LeakSanitizer finds the parent's
                                 hand-over list unreachable in the child */

/* ---- entries and counters -------------------------------------------------- */

static void entry_free(fl_renewal *e) {
  int i;
  for (i = 0; i < e->ntargets; i++) fl_opts_free(&e->targets[i]);
  fl_sentinels_free(e->sentinels);
  fl_opts_free(&e->cand);
  memset(e->token, 0, sizeof e->token);
  fl_rcounts_unref(e->counts);
  free(e->key);
  free(e->hkey);
  free(e);
}

static void unref(fl_renewal *e) {
  if (RN_ADD(&e->refs, -1) == 0) entry_free(e);
}

static void wake(int fd) {
  char b = 1;
  if (fd >= 0 && write(fd, &b, 1) < 0) { /* full: a wake-up is pending anyway */ }
}

static long long lost_seq; /* atomic: locks found lost (fl_renew_lost_seq) */

/* RUN -> LOST, counted and announced; 1 if this call made it lost */
static int lose(fl_renewal *e) {
  int run = RN_RUN;
  if (!__atomic_compare_exchange_n(&e->state, &run, RN_LOST, 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE))
    return 0;
  RN_ADD(&e->counts->lost, 1);
  RN_ADD(&lost_seq, 1); /* before the byte: who reads it sees the count */
  wake(note[1]);
  return 1;
}

/* ---- the thread ---------------------------------------------------------- */

static void attempt(thr *t, fl_renewal *e, long long now) {
  int i, n = e->asking ? 1 : e->ntargets;
  e->started = now;
  for (i = 0; i < n; i++) {
    rn_leg *l = &e->legs[i];
    l->e = e;
    l->ti = i;
    l->hops = 0;
    if (e->asking) { /* Sentinel: where is the master now? */
      l->query = RQ_DISCOVER;
      fl_sdisc_start(&e->disc, e->sentinels);
      rn_discover(&t->io, l);
    } else {
      l->query = RQ_REFRESH;
      rn_leg_send(&t->io, l);
    }
  }
}

static long long backoff(fl_renewal *e, long long now) {
  long long b = 25000000LL << (e->fails < 5 ? e->fails - 1 : 4);
  return now + (b < e->every_ns ? b : e->every_ns);
}

/* a discovery round found the master (renew at once there) or not (a
   new round after the backoff) */
static void asked(fl_renewal *e, long long now) {
  if (e->legs[0].st == LEG_OK) {
    e->asking = 0;
    e->due = now;
  } else {
    e->due = backoff(e, now);
  }
}

/* all legs of e's attempt are back: confirmed, lost, or try again */
static void verdict(fl_renewal *e, long long now) {
  int i, ok = 0, refused = 0;
  if (e->asking) {
    asked(e, now);
    e->started = 0;
    return;
  }
  for (i = 0; i < e->ntargets; i++) {
    ok += e->legs[i].st == LEG_OK;
    refused += e->legs[i].st == LEG_NOTOWNER;
  }
  if (RN_LOAD(&e->state) == RN_RUN && ok >= e->quorum &&
      now - e->started < e->ttl_ns - e->margin_ns) { /* within its validity */
    RN_STORE(&e->deadline, e->started + e->ttl_ns - e->margin_ns);
    RN_ADD(&e->counts->renewed, 1);
    e->fails = 0;
    e->due = e->started + e->every_ns;
  } else if (refused > e->ntargets - e->quorum) { /* a quorum is out of reach */
    lose(e);
  } else {
    e->fails++;
    e->due = backoff(e, now);
    if (e->sentinels) e->asking = 1; /* the master may have moved */
  }
  e->started = 0;
}

/* take the handed-over entries; 1 when there is nothing to do any more
   (then the thread is marked gone, under the same lock) */
static int take(thr *t) {
  int i, done = 0;
  pthread_mutex_lock(&mu);
  if (t->nlive + nincoming > t->cap) {
    int cap = 2 * (t->nlive + nincoming);
    fl_renewal **a = realloc(t->live, (size_t)cap * sizeof *a);
    if (a) t->live = a, t->cap = cap;
  }
  for (i = 0; i < nincoming && t->nlive < t->cap; i++) t->live[t->nlive++] = incoming[i];
  memmove(incoming, incoming + i, (size_t)(nincoming - i) * sizeof *incoming);
  nincoming -= i;
  if (t->nlive == 0 && nincoming == 0) {
    running = 0;
    cur = NULL;
    done = 1;
  }
  pthread_mutex_unlock(&mu);
  return done;
}

/* deadlines, new attempts, verdicts, stopped entries; the next wake-up */
static long long tick(thr *t, long long now) {
  long long next = now + 1000000000LL;
  int i, j, dropped = 0;
  for (i = 0; i < t->nlive; i++) {
    fl_renewal *e = t->live[i];
    int st;
    if (now >= RN_LOAD(&e->deadline)) lose(e); /* at the deadline, not later */
    if (e->started && e->inflight == 0) verdict(e, now);
    st = RN_LOAD(&e->state);
    if (st == RN_RUN && !e->started && now >= e->due) {
      attempt(t, e, now);
      if (e->inflight == 0) verdict(e, now); /* every leg failed at once */
    }
    if (st == RN_RUN) {
      long long dl = RN_LOAD(&e->deadline);
      if (dl < next) next = dl;
      if (!e->started && e->due < next) next = e->due;
    }
  }
  for (i = j = 0; i < t->nlive; i++) { /* drop what is over and idle */
    fl_renewal *e = t->live[i];
    if (RN_LOAD(&e->state) != RN_RUN && e->inflight == 0) {
      unref(e);
      dropped = 1;
    } else {
      t->live[j++] = e;
    }
  }
  t->nlive = j;
  if (dropped) rn_io_sweep(&t->io, t->live, t->nlive);
  return next;
}

static void wait_io(thr *t, long long next) {
  int n, ms;
  long long now;
  char buf[64];
  for (;;) { /* a full array may mean more connections than slots: grow */
    struct pollfd *a;
    n = rn_io_fill(&t->io, t->pf + 1, t->npf - 1, &next);
    if (n < t->npf - 1 || !(a = realloc(t->pf, (size_t)(2 * t->npf) * sizeof *a))) break;
    t->pf = a;
    t->npf *= 2;
  }
  now = rn_mono();
  ms = fl_poll_ms((double)(next - now) * 1e-9);
  t->pf[0].fd = wk[0];
  t->pf[0].events = POLLIN;
  t->pf[0].revents = 0;
  poll(t->pf, (nfds_t)n + 1, ms);
  while (read(wk[0], buf, sizeof buf) > 0) {}
  rn_io_step(&t->io, t->pf + 1, n);
}

static void *run(void *arg) {
  thr *t = arg;
  int i;
  while (!take(t) && !RN_LOAD(&quit)) wait_io(t, tick(t, rn_mono()));
  rn_io_free(&t->io); /* legs in flight fail: their entries are idle */
  for (i = 0; i < t->nlive; i++) unref(t->live[i]); /* only when quitting */
  free(t->live);
  free(t->pf);
  free(t);
  return NULL;
}

/* under mu */
static int start_thread(void) {
  pthread_t id;
  pthread_attr_t at;
  sigset_t all, old;
  thr *t = calloc(1, sizeof *t);
  int r;
  if (!t || !(t->pf = calloc(8, sizeof *t->pf))) {
    free(t);
    return -1;
  }
  t->npf = 8;
  sigfillset(&all);
  if (joinable) pthread_join(last, NULL); /* it has left take(): ends soon */
  joinable = 0;
  pthread_attr_init(&at);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits it */
  r = pthread_create(&id, &at, run, t);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&at);
  if (r != 0) {
    free(t->pf);
    free(t);
    return -1;
  }
  running = joinable = 1;
  last = id;
  cur = t;
  return 0;
}

/* at process exit: stop the thread (its requests in flight are dropped:
   the process is going anyway, and its locks expire by their ttl) and join
   it, so nothing of ours outlives the program, not even its stack.  An
   exit handler (setup registers it, to run before OpenSSL's cleanup) and
   the module's destructor: the second call finds nothing left to do */
__attribute__((destructor)) static void at_exit(void) {
  int j;
  if (!set_up) return;
  pthread_mutex_lock(&mu);
  RN_STORE(&quit, 1);
  j = joinable;
  joinable = 0;
  pthread_mutex_unlock(&mu);
  wake(wk[1]);
  if (j) pthread_join(last, NULL);
  pthread_mutex_lock(&mu);
  while (nincoming > 0) unref(incoming[--nincoming]); /* never taken */
  free(incoming);
  incoming = NULL;
  capincoming = 0;
  pthread_mutex_unlock(&mu);
}

/* ---- fork ------------------------------------------------------------------ */

static void fork_prepare(void) { pthread_mutex_lock(&mu); }
static void fork_parent(void) { pthread_mutex_unlock(&mu); }

/* a fresh pipe on the same descriptor numbers, so a number handed out
   (renewal_fd) stays valid but no longer shares the parent's pipe */
static void repipe(int fds[2]) {
  int p[2];
  if (fds[0] < 0 || pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return;
  dup3(p[0], fds[0], O_CLOEXEC);
  dup3(p[1], fds[1], O_CLOEXEC);
  close(p[0]);
  close(p[1]);
}

static void fork_child(void) {
  /* the parent's thread is not here: keep its state (it may be half way
     through anything), never touch it; its entries stay with their locks,
     which see another pid and stand aside */
  orphan[0] = cur;
  orphan[1] = incoming;
  incoming = NULL;
  nincoming = capincoming = 0;
  cur = NULL;
  running = joinable = 0; /* that thread is the parent's */
  repipe(wk);
  repipe(note);
  pthread_mutex_unlock(&mu);
}

/* ---- the Lua side ---------------------------------------------------------- */

/* once: pipes, the fork handlers, the module pinned in memory */
static int setup(void) {
  Dl_info info;
  redisReader *r;
  if (set_up) return 0;
  if (pipe2(wk, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  if (pipe2(note, O_NONBLOCK | O_CLOEXEC) != 0 ||
      pthread_atfork(fork_prepare, fork_parent, fork_child) != 0) {
    close(wk[0]);
    close(wk[1]);
    if (note[0] >= 0) close(note[0]), close(note[1]);
    wk[0] = wk[1] = note[0] = note[1] = -1;
    return -1;
  }
  /* lua_close dlcloses this module: keep its code mapped for the thread
     (linked into a program instead, it is never unmapped) */
  if (dladdr((void *)(size_t)fl_renew_start, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  /* pinned, this module's destructor runs only after exit()'s handlers,
     one of which is OpenSSL's cleanup: a thread still running then (a
     renewed lock held at exit) lost its TLS state to it, or used OpenSSL
     after it.  Exit handlers run in reverse order: OpenSSL's is
     registered first, then ours, which stops the thread before it */
  fl_tls_library_init();
  atexit(at_exit);
  if ((r = redisReaderCreate())) { /* hiredis 0.14: set up the shared table here */
    fl_reader_cap(r);
    redisReaderFree(r);
  }
  set_up = 1;
  return 0;
}

static int handover(fl_renewal *e) {
  int r = 0;
  pthread_mutex_lock(&mu);
  if (nincoming == capincoming) {
    int cap = capincoming ? 2 * capincoming : 8;
    fl_renewal **a = realloc(incoming, (size_t)cap * sizeof *a);
    if (!a) r = -1;
    else incoming = a, capincoming = cap;
  }
  if (r == 0 && !running) r = start_thread();
  if (r == 0) {
    RN_ADD(&e->refs, 1); /* the registry's */
    incoming[nincoming++] = e;
  }
  pthread_mutex_unlock(&mu);
  if (r == 0) wake(wk[1]);
  return r;
}

/* the servers the refresh goes to, as the lock's pool says now */
static int targets(fl_renewal *e, fl_pool *p, const fl_lock *lk) {
  fl_pool *nodes[FL_MAXNODES];
  int i, n = p->ops->nodes(p, lk->key, lk->keylen, nodes);
  e->quorum = n / 2 + 1; /* one server: 1 */
  for (i = 0; i < n; i++) {
    if (fl_opts_copy(&e->targets[i], &nodes[i]->o) != 0) return -1;
    e->ntargets = i + 1;
  }
  return 0;
}

static fl_renewal *entry_new(const fl_lock *lk, fl_pool *p, lua_Integer ttl,
                             lua_Integer every, double sent) {
  fl_renewal *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->refs = 1; /* the Lock's */
  e->pid = (long)getpid();
  e->counts = p->rcounts;
  RN_ADD(&p->rcounts->refs, 1);
  if (!(e->key = malloc(lk->keylen + 1)) || targets(e, p, lk) != 0) {
    entry_free(e);
    return NULL;
  }
  memcpy(e->key, lk->key, lk->keylen + 1);
  e->keylen = lk->keylen;
  if (lk->mode && !(e->hkey = fl_mode_hkey(&e->targets[0], lk, &e->hkeylen))) {
    entry_free(e);
    return NULL;
  }
  memcpy(e->token, lk->token, FL_TOKEN_LEN);
  snprintf(e->ttlarg, sizeof e->ttlarg, "%lld", (long long)ttl);
  e->ttl_ns = (long long)ttl * 1000000LL;
  e->every_ns = (long long)every * 1000000LL;
  e->margin_ns = e->ttl_ns / 100 + 2000000LL;
  e->deadline = (long long)(sent * 1e9) + e->ttl_ns - e->margin_ns;
  e->due = (long long)(sent * 1e9) + e->every_ns;
  return e;
}

/* core.renew(lock, ttl_ms, every_ms, sent_at) -> true | nil, message.
   sent_at: core.now() when the obtain that got the lock was sent.  A
   Sentinel pool's sentinels (a copy) go with the entry: the thread asks
   them after a failed renewal */
int fl_renew_start(lua_State *L) {
  fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  lua_Integer ttl = luaL_checkinteger(L, 2), every = luaL_checkinteger(L, 3);
  double sent = (double)luaL_checknumber(L, 4);
  fl_pool *p = lk->pool;
  fl_renewal *e = NULL;
  luaL_argcheck(L, ttl >= 1, 2, "ttl must be at least 1 ms");
  luaL_argcheck(L, every >= 1 && every < ttl, 3, "renew interval must be less than ttl");
  luaL_argcheck(L, !lk->renew, 1, "lock is already renewed");
  if (!lk->held || !p) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushnil(L);
  if (setup() != 0) {
    lua_pushstring(L, "fluxalock: renew: no pipe for the renewal thread");
    return 2;
  }
  if (!p->rcounts && (p->rcounts = calloc(1, sizeof *p->rcounts))) p->rcounts->refs = 1;
  if (!p->rcounts || !(e = entry_new(lk, p, ttl, every, sent)) ||
      (p->group.sentinels && !(e->sentinels = fl_sentinels_copy(p->group.sentinels)))) {
    if (e) entry_free(e);
    lua_pushstring(L, "fluxalock: renew: out of memory");
    return 2;
  }
  if (handover(e) != 0) {
    entry_free(e);
    lua_pushstring(L, "fluxalock: renew: cannot start the renewal thread");
    return 2;
  }
  lk->renew = e;
  lua_pushboolean(L, 1);
  return 1;
}

/* core.renewal_fd() -> fd (internal: the fluxalock command polls it) */
int fl_renew_fd(lua_State *L) {
  if (setup() != 0) return luaL_error(L, "fluxalock: renewal_fd: no pipe");
  lua_pushinteger(L, note[0]);
  return 1;
}

int fl_renew_foreign(const fl_lock *lk) {
  return lk->renew && lk->renew->pid != (long)getpid();
}

void fl_renew_stop(fl_lock *lk) {
  int run = RN_RUN;
  if (!lk->renew || fl_renew_foreign(lk)) return;
  if (__atomic_compare_exchange_n(&lk->renew->state, &run, RN_STOPPED, 0,
                                  __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    wake(wk[1]);
}

void fl_renew_drop(fl_lock *lk) {
  fl_renewal *e = lk->renew;
  if (!e) return;
  fl_renew_stop(lk);
  lk->renew = NULL;
  unref(e);
}

int fl_renew_held(const fl_lock *lk) {
  const fl_renewal *e = lk->renew;
  if (!e) return 1;
  if (fl_renew_foreign(lk) || RN_LOAD(&e->state) == RN_LOST) return 0;
  return rn_mono() < RN_LOAD(&e->deadline);
}

/* the renewal found this lock lost (and counted it): a later call that finds
   it gone must not count it again (stats.c) */
int fl_renew_found_lost(const fl_lock *lk) {
  const fl_renewal *e = lk->renew;
  return e && RN_LOAD(&e->state) == RN_LOST;
}

long long fl_renew_lost_seq(void) { return RN_LOAD(&lost_seq); }

int fl_renew_stopped(const fl_lock *lk) {
  const fl_renewal *e = lk->renew;
  return !e || fl_renew_foreign(lk) || RN_LOAD(&e->state) == RN_STOPPED;
}

