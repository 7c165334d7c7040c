/*
 * The one clock: seconds since boot, counting a suspend (deadlines, the
 * debug log's durations, the renewal thread's schedule).
 *
 * CLOCK_MONOTONIC stops while the machine sleeps, but Redis expires keys by
 * its own clock, which does not: after a resume a lock would look held
 * locally for as long as the suspend lasted after it expired in Redis.
 * CLOCK_BOOTTIME (Linux 2.6.39) goes on counting; a kernel without it
 * gets CLOCK_MONOTONIC (core.clock says which).
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <time.h>

#include "fluxalock.h"

static clockid_t which = CLOCK_MONOTONIC;
static const char *which_name = "monotonic";
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void choose(void) {
#ifdef CLOCK_BOOTTIME
  struct timespec ts;
  if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0) {
    which = CLOCK_BOOTTIME;
    which_name = "boottime";
  }
#endif
}

const char *fl_clock_name(void) {
  pthread_once(&once, choose);
  return which_name;
}

long long fl_now_ns(void) {
  struct timespec ts;
  pthread_once(&once, choose);
  clock_gettime(which, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

double fl_now(void) {
  struct timespec ts;
  pthread_once(&once, choose);
  clock_gettime(which, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* seconds left -> a poll(2) timeout in ms: rounded up (never wake before),
   0 when due or NaN, and at most an hour: (int)(s * 1000) overflows past
   24.8 days into a negative timeout, which poll takes as "for ever" (a
   caller that wakes early looks at its deadline and waits again) */
int fl_poll_ms(double s) {
  if (!(s > 0)) return 0;
  if (s >= 3600.0) return 3600000;
  return (int)(s * 1000.0) + 1;
}
