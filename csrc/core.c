/*
 * luaopen_fluxalock_core: the module table, with the Pool and Lock
 * metatables built once here.  The pure-Lua layer (lua/fluxalock.lua) is the
 * public face; this module is its engine.
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "fluxalock.h"
#include "net.h"

#ifndef FLUXALOCK_VERSION
#define FLUXALOCK_VERSION "0.2.0"
#endif

int luaopen_fluxalock_core(lua_State *L);

/* core.sleep(seconds): a plain blocking sleep, for scripts and examples */
static int core_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  struct timespec ts;
  luaL_argcheck(L, s >= 0 && s <= 1e9, 1, "seconds out of range");
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  return 0;
}

/* core.idlefd() -> a descriptor that never becomes readable (the read end
   of a pipe nobody writes): a wait-only host sleeps on it.  Close-on-exec:
   a program's children (the fluxalock command's) do not inherit it */
static int idle[2] = {-1, -1}, idle_err; /* one per process, made once */
static pthread_once_t idle_once = PTHREAD_ONCE_INIT;

static void idle_make(void) {
  if (pipe2(idle, O_CLOEXEC) != 0) idle_err = errno;
}

static int core_idlefd(lua_State *L) {
  pthread_once(&idle_once, idle_make);
  if (idle_err) return luaL_error(L, "fluxalock: pipe: %s", strerror(idle_err));
  lua_pushinteger(L, idle[0]);
  return 1;
}

int luaopen_fluxalock_core(lua_State *L) {
  fl_scripts_init();
  lua_newtable(L);
  fl_pool_open(L);
  fl_stats_open(L);
  fl_sub_open(L);
  fl_lock_open(L);
  fl_tls_open(L);
  fl_lost_open(L);
  fl_mode_open(L);
  lua_pushcfunction(L, core_sleep);
  lua_setfield(L, -2, "sleep");
  lua_pushcfunction(L, core_idlefd);
  lua_setfield(L, -2, "idlefd");
  lua_pushcfunction(L, fl_renew_start);
  lua_setfield(L, -2, "renew");
  lua_pushcfunction(L, fl_renew_fd); /* internal: for the fluxalock command */
  lua_setfield(L, -2, "renewal_fd");
  lua_pushstring(L, fl_clock_name()); /* internal: the deadlines' clock */
  lua_setfield(L, -2, "clock");
  lua_pushstring(L, FLUXALOCK_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, HIREDIS_MAJOR);
  lua_setfield(L, -2, "hiredis_major");
  return 1;
}
