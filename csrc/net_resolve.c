/*
 * Host names resolved off the caller's thread.
 *
 * getaddrinfo blocks for as long as the system's resolver likes (seconds
 * per DNS server that does not answer), and connect_timeout cannot bound
 * it.  A detached thread per name calls it instead, and signals an eventfd
 * when done; the caller polls that fd like any socket (poll(2) or the
 * host's event loop), so a plain script keeps its deadline and a host's
 * other coroutines keep running.  A caller that gives up drops its
 * reference and walks away: the thread frees the request when it ends.
 * A thread, not c-ares: the system's own lookup (/etc/hosts, nsswitch,
 * search domains) stays exactly what every other program on the host gets.
 *
 * lua_close dlcloses this module, and a caller that gave up may let the
 * program close its Lua state while a lookup runs: before the first thread
 * starts, the module is pinned in memory (dlopen RTLD_NODELETE, as the
 * renewal thread does), so a thread never returns into unmapped code.
 */
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE */
#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "net_int.h"

struct fl_resolve {
  pthread_mutex_t mu;
  int refs;              /* the caller's and the thread's */
  int done, gai;         /* getaddrinfo's result code once done */
  int efd;               /* readable once done */
  struct addrinfo *ai;   /* the answer until taken */
  char port[8];
  char host[1];          /* sized to fit */
};

static void unref(fl_resolve *r) {
  int left;
  pthread_mutex_lock(&r->mu);
  left = --r->refs;
  pthread_mutex_unlock(&r->mu);
  if (left) return;
  if (r->ai) freeaddrinfo(r->ai);
  close(r->efd);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static void *run(void *arg) {
  fl_resolve *r = arg;
  struct addrinfo hints, *ai = NULL;
  uint64_t one = 1;
  int gai;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  gai = getaddrinfo(r->host, r->port, &hints, &ai);
  pthread_mutex_lock(&r->mu);
  r->gai = gai;
  r->ai = gai == 0 ? ai : NULL;
  r->done = 1;
  pthread_mutex_unlock(&r->mu);
  if (write(r->efd, &one, sizeof one) < 0) { /* cannot fail: a counter */ }
  unref(r);
  return NULL;
}

/* once: keep this module mapped for as long as the process lives (linked
   into a program instead, it is never unmapped) */
static void pin(void) {
  Dl_info info;
  if (dladdr((void *)(size_t)fl_resolve_start, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

fl_resolve *fl_resolve_start(const char *host, int port) {
  static pthread_once_t pinned = PTHREAD_ONCE_INIT;
  size_t n = strlen(host);
  fl_resolve *r = calloc(1, sizeof *r + n);
  pthread_attr_t at;
  pthread_t t;
  sigset_t all, old;
  int bad;
  if (!r) return NULL;
  pthread_once(&pinned, pin);
  memcpy(r->host, host, n + 1);
  snprintf(r->port, sizeof r->port, "%d", port);
  r->refs = 2;
  if ((r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    free(r);
    return NULL;
  }
  pthread_mutex_init(&r->mu, NULL);
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  sigfillset(&all); /* signals stay the program's: the thread takes none */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  bad = pthread_create(&t, &at, run, r);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&at);
  if (bad) {
    r->refs = 1;
    unref(r);
    return NULL;
  }
  return r;
}

int fl_resolve_fd(const fl_resolve *r) { return r->efd; }

int fl_resolve_take(fl_resolve *r, struct addrinfo **ai, const char **why) {
  int done;
  pthread_mutex_lock(&r->mu);
  done = r->done;
  *ai = r->ai;
  r->ai = NULL; /* the caller's now */
  *why = done && !*ai ? gai_strerror(r->gai) : NULL;
  pthread_mutex_unlock(&r->mu);
  return done;
}

void fl_resolve_drop(fl_resolve *r) {
  if (r) unref(r);
}
