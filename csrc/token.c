/*
 * Lock tokens: 128 bits from the kernel CSPRNG, as 32 hex characters.
 *
 * Random bytes are read 512 at a time (one syscall per 32 tokens).  A forked
 * child must never hand out the bytes its parent also holds, or two processes
 * would share a token: a pthread_atfork child handler empties the buffer
 * (cheaper than asking getpid() on every token).
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

static unsigned char pool[512];
static size_t avail = 0;
static int forkwatch = 0; /* the atfork handler is installed */

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

static void forget(void) {
  memset(pool, 0, sizeof pool);
  avail = 0;
}

int fl_token(char out[FL_TOKEN_LEN]) {
  static const char hex[] = "0123456789abcdef";
  int i;
  if (!forkwatch) {
    if (pthread_atfork(NULL, NULL, forget) != 0) return -1;
    forkwatch = 1;
  }
  if (avail < 16) {
    if (fill(pool, sizeof pool) != 0) return -1;
    avail = sizeof pool;
  }
  avail -= 16;
  for (i = 0; i < 16; i++) {
    unsigned char b = pool[avail + (size_t)i];
    out[2 * i] = hex[b >> 4];
    out[2 * i + 1] = hex[b & 15];
  }
  memset(pool + avail, 0, 16); /* used bytes never linger */
  return 0;
}

/* this process's id in its releases' messages: random, made once */
const char *fl_wake_id(void) {
  static char id[FL_TOKEN_LEN + 1];
  if (!id[0] && fl_token(id) != 0) memcpy(id, "0000000000000000", FL_WAKE_ID_LEN);
  return id;
}
