/*
 * A Lua module for the allocation-failure specs: it puts an allocator in
 * front of the Lua state's own, which fails on request.
 *
 *   local fa = require "failalloc_lua"
 *   fa.arm(n)       -- the n-th allocation from now fails (and Lua's
 *                   -- retry of it after an emergency collection: the
 *                   -- same request again); later ones succeed
 *   fa.disarm()     -- -> true when an allocation failed since arm
 *
 * Only allocations and growths fail, never a free or a shrink.
 */
#include <lauxlib.h>
#include <lua.h>

static lua_Alloc inner;
static void *inner_ud;
static long countdown; /* 0: off */
static int failing, fired;
static void *fptr; /* the request that failed, to fail its retry too */
static size_t fosize, fnsize;

static void *alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  int grows = nsize > 0 && (ptr == NULL || nsize > osize);
  if (failing && grows) { /* Lua's retry of the failed request (after an
                             emergency collection, which frees and
                             shrinks) fails too; then no more */
    failing = 0;
    if (ptr == fptr && osize == fosize && nsize == fnsize) return NULL;
  }
  if (grows && countdown > 0 && --countdown == 0) {
    failing = fired = 1;
    fptr = ptr, fosize = osize, fnsize = nsize;
    return NULL;
  }
  return inner(inner_ud, ptr, osize, nsize);
}

static int arm(lua_State *L) {
  countdown = (long)luaL_checkinteger(L, 1);
  failing = fired = 0;
  return 0;
}

static int disarm(lua_State *L) {
  countdown = 0;
  failing = 0;
  lua_pushboolean(L, fired);
  fired = 0;
  return 1;
}

/* lua_close unloads this module after the finalizers of the objects made
   after it ran: the state gets its allocator back before then */
static int restore(lua_State *L) {
  lua_setallocf(L, inner, inner_ud);
  return 0;
}

int luaopen_failalloc_lua(lua_State *L);
int luaopen_failalloc_lua(lua_State *L) {
  static const luaL_Reg fns[] = {{"arm", arm}, {"disarm", disarm}, {NULL, NULL}};
  if (!inner) {
    inner = lua_getallocf(L, &inner_ud);
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, restore);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "failalloc_lua.restore");
    lua_setallocf(L, alloc, NULL);
  }
  luaL_newlib(L, fns);
  return 1;
}
