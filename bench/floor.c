/*
 * The floor: the cheapest correct Redis lock, in C on blocking hiredis.
 *
 *   obtain   SET key token NX PX ms        (one round trip)
 *   release  EVALSHA compare-and-delete    (one round trip)
 *   waiting  poll: try again every 100 microseconds
 *
 * Tokens are 128 random bits from getrandom(2), as for fluxalock, so the
 * floor is a lock one could actually ship, not just two round trips.
 *
 * Usage (the same for every driver, see bench/run.lua):
 *   floor MODE PORT OUT START END KEY ROUNDS
 * MODE w1 (uncontended pairs), w2 (contended), w3a / w3b (handoff holder /
 * waiter).  START and END are CLOCK_MONOTONIC seconds: the measured window.
 * OUT gets a header line "count=N total=N elapsed=S violations=N" and one
 * sample per line (microseconds for w1/w2, monotonic seconds for w3).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

static const char RELEASE[] =
  "if redis.call('get', KEYS[1]) == ARGV[1] then "
  "return redis.call('del', KEYS[1]) end return 0";

static redisContext *rc;
static char sha[64];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
  struct timespec ts;
  if (s <= 0) return;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void die(const char *what) {
  fprintf(stderr, "floor: %s: %s\n", what, rc && rc->err ? rc->errstr : "bad reply");
  exit(1);
}

/* a reply we need: never NULL, never an error */
static redisReply *cmd(int argc, const char **argv) {
  redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
  if (!r) die(argv[0]);
  if (r->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "floor: %s: %s\n", argv[0], r->str);
    exit(1);
  }
  return r;
}

static long long cmd_int(int argc, const char **argv) {
  redisReply *r = cmd(argc, argv);
  long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  freeReplyObject(r);
  return n;
}

/* 32 hex characters from a buffer of kernel random bytes */
static void token(char out[33]) {
  static unsigned char buf[4096];
  static size_t pos = sizeof buf;
  static const char hex[] = "0123456789abcdef";
  int i;
  if (pos + 16 > sizeof buf) {
    if (getrandom(buf, sizeof buf, 0) != (ssize_t)sizeof buf) die("getrandom");
    pos = 0;
  }
  for (i = 0; i < 16; i++) {
    out[2 * i] = hex[buf[pos + i] >> 4];
    out[2 * i + 1] = hex[buf[pos + i] & 15];
  }
  out[32] = '\0';
  pos += 16;
}

/* SET NX PX: 1 obtained, 0 held elsewhere */
static int try_obtain(const char *key, const char *tok) {
  const char *argv[] = {"SET", key, tok, "NX", "PX", "10000"};
  redisReply *r = cmd(6, argv);
  int ok = r->type == REDIS_REPLY_STATUS;
  freeReplyObject(r);
  return ok;
}

/* wait up to 'wait' seconds, polling every 100 microseconds */
static int obtain(const char *key, char tok[33], double wait) {
  double deadline = now() + wait;
  token(tok);
  for (;;) {
    if (try_obtain(key, tok)) return 1;
    if (now() >= deadline) return 0;
    sleep_s(100e-6);
  }
}

static void release(const char *key, const char *tok) {
  const char *argv[] = {"EVALSHA", sha, "1", key, tok};
  if (cmd_int(5, argv) != 1) die("release: lock was lost");
}

int main(int argc, char **argv) {
  const char *mode, *out, *key;
  double start, end;
  int port, rounds, i;
  size_t n = 0, cap = 1 << 16;
  long long total = 0, violations = 0;
  double *s, t0, t1;
  char tok[33], k[256];
  FILE *f;
  if (argc != 8) {
    fprintf(stderr, "usage: floor MODE PORT OUT START END KEY ROUNDS\n");
    return 2;
  }
  mode = argv[1];
  port = atoi(argv[2]);
  out = argv[3];
  start = atof(argv[4]);
  end = atof(argv[5]);
  key = argv[6];
  rounds = atoi(argv[7]);
  if (!(s = malloc(cap * sizeof *s))) return 1;
  {
    struct timeval tv = {10, 0};
    rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!rc || rc->err) die("connect");
  }
  {
    const char *a[] = {"SCRIPT", "LOAD", RELEASE};
    redisReply *r = cmd(3, a);
    snprintf(sha, sizeof sha, "%s", r->str);
    freeReplyObject(r);
  }
  if (strcmp(mode, "w1") == 0 || strcmp(mode, "w2") == 0) {
    int w2 = mode[1] == '2';
    const char *incr[] = {"INCR", "bench:holders"};
    const char *decr[] = {"DECR", "bench:holders"};
    sleep_s(start - now());
    for (i = 0; (t0 = now()) < end; i++) {
      if (!w2) snprintf(k, sizeof k, "%s:%d", key, i);
      if (!obtain(w2 ? key : k, tok, w2 ? 5.0 : 0.0)) die("obtain: not obtained");
      if (w2) {
        t1 = now(); /* time to acquire */
        if (cmd_int(2, incr) != 1) violations++;
        cmd_int(2, decr);
        release(key, tok);
      } else {
        release(k, tok);
        t1 = now(); /* the whole pair */
      }
      total++;
      if (t1 >= end) continue; /* finished outside the window */
      if (n == cap) {
        double *g = realloc(s, 2 * cap * sizeof *s);
        if (!g) die("out of memory");
        s = g;
        cap *= 2;
      }
      s[n++] = (t1 - t0) * 1e6;
    }
  } else if (strcmp(mode, "w3a") == 0 || strcmp(mode, "w3b") == 0) {
    char ready[256], go[256];
    const char *pop_ready[] = {"BLPOP", ready, "10"};
    const char *pop_go[] = {"BLPOP", go, "10"};
    const char *push_ready[] = {"RPUSH", ready, "1"};
    const char *push_go[] = {"RPUSH", go, "1"};
    snprintf(ready, sizeof ready, "%s:ready", key);
    snprintf(go, sizeof go, "%s:go", key);
    for (i = 0; i < rounds; i++) {
      if (mode[2] == 'a') { /* holder */
        freeReplyObject(cmd(3, pop_ready));
        if (!obtain(key, tok, 1.0)) die("w3a: not obtained");
        cmd_int(3, push_go);
        sleep_s((20 + (i * 7919) % 101) / 1000.0); /* 20..120 ms */
        t0 = now();
        release(key, tok);
        s[n++] = t0;
      } else { /* waiter */
        cmd_int(3, push_ready);
        freeReplyObject(cmd(3, pop_go));
        if (!obtain(key, tok, 5.0)) die("w3b: not obtained");
        s[n++] = now();
        release(key, tok);
      }
      total++;
    }
    start = end = 0;
  } else {
    fprintf(stderr, "floor: unknown mode %s\n", mode);
    return 2;
  }
  if (!(f = fopen(out, "w"))) die("open output");
  fprintf(f, "count=%zu total=%lld elapsed=%.6f violations=%lld\n", n, total,
          end - start, violations);
  for (i = 0; (size_t)i < n; i++) fprintf(f, "%.6f\n", s[i]);
  fclose(f);
  free(s);
  redisFree(rc);
  return 0;
}
