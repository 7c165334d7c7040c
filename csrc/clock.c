/*
 * The one clock: monotonic seconds (deadlines, the debug log's durations).
 */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "fluxalock.h"

double fl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
