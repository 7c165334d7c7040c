/*
 * Lock tokens: 128 bits from the kernel CSPRNG, as 32 hex characters.
 *
 * Random bytes are read 512 at a time (one syscall per 32 tokens).  A forked
 * child must never hand out the bytes its parent also holds, or two processes
 * would share a token: a pthread_atfork child handler empties the buffer
 * (cheaper than asking getpid() on every token).
 *
 * The buffer is the process's, shared by every Lua state (an embedding
 * program may run one per thread): a mutex guards it, so two threads never
 * take the same bytes.  fork holds it (atfork prepare), so a child never
 * inherits it locked mid-draw.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include "fluxalock.h"

static unsigned char pool[512]; /* under mu */
static size_t avail = 0;         /* under mu */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t forkwatch = PTHREAD_ONCE_INIT; /* the atfork handlers */
static int forkwatch_err;

static int from_urandom(unsigned char *buf, size_t n) {
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  size_t got = 0;
  if (fd < 0) return -1;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  return got == n ? 0 : -1;
}

static int fill(unsigned char *buf, size_t n) {
#if defined(__linux__) && defined(SYS_getrandom)
  size_t got = 0;
  while (got < n) {
    long r = syscall(SYS_getrandom, buf + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return from_urandom(buf, n); /* ENOSYS: an old kernel */
    got += (size_t)r;
  }
  return 0;
#else
  return from_urandom(buf, n);
#endif
}

static void hold(void) { pthread_mutex_lock(&mu); }
static void let_go(void) { pthread_mutex_unlock(&mu); }

static void forget(void) { /* in a fork child: the parent's bytes are not ours */
  memset(pool, 0, sizeof pool);
  avail = 0;
  pthread_mutex_unlock(&mu);
}

static void watch_fork(void) {
  forkwatch_err = pthread_atfork(hold, let_go, forget) != 0;
}

int fl_token(char out[FL_TOKEN_LEN]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char b[16];
  int i;
  pthread_once(&forkwatch, watch_fork);
  if (forkwatch_err) return -1;
  pthread_mutex_lock(&mu);
  if (avail < 16) {
    if (fill(pool, sizeof pool) != 0) {
      pthread_mutex_unlock(&mu);
      return -1;
    }
    avail = sizeof pool;
  }
  avail -= 16;
  memcpy(b, pool + avail, 16);
  memset(pool + avail, 0, 16); /* used bytes never linger */
  pthread_mutex_unlock(&mu);
  for (i = 0; i < 16; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  memset(b, 0, sizeof b);
  return 0;
}

/* this process's id in its releases' messages: random, made once */
static char wake_id[FL_TOKEN_LEN + 1];
static pthread_once_t wake_once = PTHREAD_ONCE_INIT;

static void make_wake_id(void) {
  if (fl_token(wake_id) != 0) memcpy(wake_id, "0000000000000000", FL_WAKE_ID_LEN);
}

const char *fl_wake_id(void) {
  pthread_once(&wake_once, make_wake_id);
  return wake_id;
}
