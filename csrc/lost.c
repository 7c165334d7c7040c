/*
 * Lost leases, told (API.md): the Lua side of what the renewal thread
 * (renew.c) reports.  The thread counts every renewed lock it finds lost
 * (fl_renew_lost_seq) and then writes a byte to a pipe whose read end is
 * fluxalock.lost_fd() (core.renewal_fd).  The Lua layer keeps the locks'
 * on_lost functions; its dispatch drains the pipe (core.lost_drain) and
 * calls the functions of the locks whose renewal is lost
 * (core.renewal_state).  In a plain script it also lends its dispatch to
 * the lock methods (core.setdispatch): each of them first runs the
 * functions due (fl_lost_tell), as the Locker's methods do in Lua.
 */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "fluxalock.h"

#define FL_DISPATCH "fluxalock.dispatch" /* registry: the Lua layer's dispatch,
                                            while a plain script has on_lost
                                            functions to call */

/* at the start of a lock method: a renewed lock was found lost since the
   Lua layer last looked?  Its dispatch knows; nothing when no lock was
   ever lost in this process, or no function waits for it.  Never raises
   (the function's own error is reported by the Lua layer) */
void fl_lost_tell(lua_State *L) {
  if (fl_renew_lost_seq() == 0) return;
  if (lua_getfield(L, LUA_REGISTRYINDEX, FL_DISPATCH) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
}

/* core.setdispatch(fn | nil): the function fl_lost_tell calls */
static int lost_setdispatch(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, FL_DISPATCH);
  return 0;
}

/* core.lost_seq() -> how many renewed locks this process found lost */
static int lost_seq(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)fl_renew_lost_seq());
  return 1;
}

/* core.lost_drain(fd): read the pipe empty (it is non-blocking), so a
   poll loop sees it readable again only for a loss still to come */
static int lost_drain(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  char buf[256];
  while (read(fd, buf, sizeof buf) > 0) {}
  return 0;
}

/* core.renewal_state(lock) -> "renewing" | "lost" | "stopped" (released,
   collected, never renewed, or another process's after fork) */
static int lost_state(lua_State *L) {
  const fl_lock *lk = luaL_checkudata(L, 1, FL_LOCK_MT);
  lua_pushstring(L, fl_renew_found_lost(lk) ? "lost" : fl_renew_stopped(lk) ? "stopped"
                                                                             : "renewing");
  return 1;
}

void fl_lost_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"setdispatch", lost_setdispatch}, {"lost_seq", lost_seq},
                                 {"lost_drain", lost_drain}, {"renewal_state", lost_state},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
