/*
 * Lock tokens: 128 bits from the kernel CSPRNG, as 32 hex characters, and
 * 8 more: the first of SHA-1("fluxalock:" .. those 32), in hex.  The mark
 * tells a value fluxalock wrote from another client's on the same key
 * (redis-py's Lock and node-redlock write 32 hex digits too): inspect's
 * script checks it with redis.sha1hex (modes_scripts.h).
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
#include <stdint.h>
#include <stdio.h>
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

/* ---- SHA-1 (FIPS 180-4): a token's mark, and the scripts' EVALSHA (keys.c) -- */

#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static void sha1_block(uint32_t h[5], const unsigned char *p) {
  uint32_t w[80], a, b, c, d, e, t;
  int i;
  for (i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
  for (i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999u; }
    else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1u; }
    else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
    else { f = b ^ c ^ d; k = 0xCA62C1D6u; }
    t = ROL(a, 5) + f + e + k + w[i];
    e = d; d = c; c = ROL(b, 30); b = a; a = t;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

void fl_sha1_hex(const char *msg, char out[41]) {
  uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u,
                   0xC3D2E1F0u};
  size_t len = strlen(msg), i;
  unsigned char blk[64];
  uint64_t bits = (uint64_t)len * 8;
  for (i = 0; i + 64 <= len; i += 64) sha1_block(h, (const unsigned char *)msg + i);
  size_t rest = len - i;
  memset(blk, 0, sizeof blk);
  memcpy(blk, msg + i, rest);
  blk[rest] = 0x80;
  if (rest >= 56) { /* no room for the length: one more block */
    sha1_block(h, blk);
    memset(blk, 0, sizeof blk);
  }
  for (i = 0; i < 8; i++) blk[63 - i] = (unsigned char)(bits >> (8 * i));
  sha1_block(h, blk);
  for (i = 0; i < 5; i++) snprintf(out + 8 * i, 9, "%08x", (unsigned)h[i]);
}

/* the mark after the random part (see above) */
static void mark(char out[FL_TOKEN_LEN]) {
  char msg[10 + FL_TOKEN_RANDOM + 1], sha[41];
  memcpy(msg, "fluxalock:", 10);
  memcpy(msg + 10, out, FL_TOKEN_RANDOM);
  msg[10 + FL_TOKEN_RANDOM] = '\0';
  fl_sha1_hex(msg, sha);
  memcpy(out + FL_TOKEN_RANDOM, sha, FL_TOKEN_LEN - FL_TOKEN_RANDOM);
  memset(msg, 0, sizeof msg);
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
  mark(out);
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
