/*
 * luaopen_fluxalock_core: the module table, with the Pool and Lock
 * metatables built once here.  The pure-Lua layer (lua/fluxalock.lua) is the
 * public face; this module is its engine.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
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
   of a pipe nobody writes): a wait-only host sleeps on it */
static int core_idlefd(lua_State *L) {
  static int fds[2] = {-1, -1};
  if (fds[0] < 0 && pipe(fds) != 0) return luaL_error(L, "fluxalock: pipe: %s", strerror(errno));
  lua_pushinteger(L, fds[0]);
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
  fl_mode_open(L);
  lua_pushcfunction(L, core_sleep);
  lua_setfield(L, -2, "sleep");
  lua_pushcfunction(L, core_idlefd);
  lua_setfield(L, -2, "idlefd");
  lua_pushcfunction(L, fl_renew_start);
  lua_setfield(L, -2, "renew");
  lua_pushcfunction(L, fl_renew_fd); /* internal: for the fluxalock command */
  lua_setfield(L, -2, "renewal_fd");
  lua_pushstring(L, FLUXALOCK_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, HIREDIS_MAJOR);
  lua_setfield(L, -2, "hiredis_major");
  return 1;
}
