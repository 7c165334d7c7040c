/* Included first by tools/checks/clang-tidy.sh only: Lua's raising
   functions longjmp but are not declared noreturn, so the static analyzer
   follows paths past them (e.g. a NULL pointer after luaL_error).  Saying
   what they do removes those false paths without silencing any check.
   No header is included here, so each file's feature macros still come
   first; lua.h's later declarations inherit the attribute. */
struct lua_State;
__attribute__((noreturn)) int lua_error(struct lua_State *L);
__attribute__((noreturn)) int luaL_error(struct lua_State *L, const char *fmt, ...);
__attribute__((noreturn)) int luaL_argerror(struct lua_State *L, int arg, const char *extramsg);
__attribute__((noreturn)) int luaL_typeerror(struct lua_State *L, int arg, const char *tname);
