/*
 * A test host embedding Lua (spec/threads_spec.lua): each script given on
 * the command line runs in a Lua state of its own, on an OS thread of its
 * own, all at once (an embedding program with a state per thread).  A
 * script sees the global THREAD (1, 2, ...) and returns a string, which is
 * printed once every thread has ended and closed its state.  With
 * -l SECONDS the program then lives on for that long before it exits, as a
 * host that goes on after lua_close (which unloads the C modules).
 *
 *   lua_threads [-l SECONDS] script.lua [script.lua ...]
 *
 * Exit status 0 when every script ran and returned a string, 1 otherwise.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define MAXT 16

typedef struct run {
  const char *file;
  int index;
  char *out; /* what the script returned, or the error, malloc'd */
  int ok;
} run;

static char *copy(const char *s, size_t n) {
  char *r = malloc(n + 1);
  if (r) memcpy(r, s, n), r[n] = 0;
  return r;
}

static void *thread_main(void *arg) {
  run *r = arg;
  lua_State *L = luaL_newstate();
  const char *s;
  size_t n;
  if (!L) {
    r->out = copy("cannot create a state", 21);
    return NULL;
  }
  luaL_openlibs(L);
  lua_pushinteger(L, r->index);
  lua_setglobal(L, "THREAD");
  if (luaL_loadfile(L, r->file) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    s = lua_tolstring(L, -1, &n);
    r->out = s ? copy(s, n) : copy("error", 5);
  } else if ((s = lua_tolstring(L, -1, &n))) {
    r->out = copy(s, n);
    r->ok = 1;
  } else {
    r->out = copy("the script returned no string", 29);
  }
  lua_close(L); /* unloads the C modules this state loaded */
  return NULL;
}

int main(int argc, char **argv) {
  run runs[MAXT];
  pthread_t t[MAXT];
  double linger = 0;
  int i = 1, n = 0, bad = 0;
  if (argc > 2 && strcmp(argv[1], "-l") == 0) {
    linger = atof(argv[2]);
    i = 3;
  }
  if (i >= argc || argc - i > MAXT) {
    fprintf(stderr, "usage: lua_threads [-l SECONDS] script.lua [script.lua ...]\n");
    return 2;
  }
  for (; i < argc; i++, n++) {
    runs[n].file = argv[i];
    runs[n].index = n + 1;
    runs[n].out = NULL;
    runs[n].ok = 0;
    if (pthread_create(&t[n], NULL, thread_main, &runs[n]) != 0) {
      fprintf(stderr, "lua_threads: pthread_create failed\n");
      return 1;
    }
  }
  for (i = 0; i < n; i++) pthread_join(t[i], NULL);
  for (i = 0; i < n; i++) {
    if (runs[i].ok) printf("%s\n", runs[i].out);
    else fprintf(stderr, "lua_threads: %s: %s\n", runs[i].file, runs[i].out ? runs[i].out : "out of memory");
    bad |= !runs[i].ok;
    free(runs[i].out);
  }
  fflush(stdout);
  if (linger > 0) {
    struct timespec ts;
    ts.tv_sec = (time_t)linger;
    ts.tv_nsec = (long)((linger - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  }
  return bad;
}
