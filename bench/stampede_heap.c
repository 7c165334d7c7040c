/* bench/stampede_heap.c: the live C heap of this process, for the W6/W7
 * memory figures (bench/stampede_fl.lua).  The resident set is a high-water
 * mark (malloc keeps freed pages, and a run frees much before it samples);
 * mallinfo2() counts the bytes malloc has handed out and not had back:
 * every C allocation of the library, hiredis, libuv and luv, and the Lua
 * heap (lua5.4 allocates with realloc).  glibc only (2.33 and later). */
#include <malloc.h>

#include <lauxlib.h>
#include <lua.h>

int luaopen_stampede_heap(lua_State *L);

static int heap_inuse(lua_State *L) {
  struct mallinfo2 m = mallinfo2();
  /* uordblks: in use from the arenas; hblkhd: in blocks malloc mmap'ed alone */
  lua_pushinteger(L, (lua_Integer)(m.uordblks + m.hblkhd));
  return 1;
}

int luaopen_stampede_heap(lua_State *L) {
  lua_pushcfunction(L, heap_inuse);
  return 1;
}
