/*
 * libFuzzer target: URL and pool-option parsing (lua/fluxalock/config.lua).
 *
 * The parsing is Lua, so this harness embeds a Lua state that loads
 * config.lua once and feeds it the input:
 *   byte 0 % 3 == 0  config.parse_url(<rest>)
 *              == 1  config.pool("p", "redis://u:<SECRET>@" .. <rest>)
 *              == 2  config.check{pools = {p = <table>}}, the table built
 *                    from "key=value" lines of <rest> (numbers, booleans,
 *                    "nan", "inf" and strings), with password = <SECRET>
 * It asserts what config.lua promises: it either returns a table or raises
 * a *string*; no error ever contains the password; nothing crashes
 * (ASan/UBSan watch the interpreter and the harness).
 *
 * Build and run: make fuzz (fuzz/run.sh).  CONFIG_LUA is the absolute path
 * of lua/fluxalock/config.lua, set at build time.
 */
#define _GNU_SOURCE /* memmem */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef CONFIG_LUA
#error "build with -DCONFIG_LUA=\"/abs/path/lua/fluxalock/config.lua\""
#endif

#define SECRET "Fz-SECRET-pw"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

/* the driver, in Lua: raises only with the config module's own errors, or
   with "HARNESS:" when a promise is broken */
static const char driver[] =
  "local config, mode, input, secret = ...\n"
  "if mode == 0 then\n"
  "  return config.parse_url(input, 'p')\n"
  "elseif mode == 1 then\n"
  "  return config.pool('p', 'redis://u:' .. secret .. '@' .. input)\n"
  "end\n"
  "local t = { password = secret }\n"
  "for k, v in input:gmatch('([^=\\n]*)=([^\\n]*)') do\n"
  "  local n = tonumber(v)\n"
  "  if v == 'true' then t[k] = true elseif v == 'false' then t[k] = false\n"
  "  elseif v == 'nan' then t[k] = 0/0 elseif v == 'inf' then t[k] = math.huge\n"
  "  elseif v == '-inf' then t[k] = -math.huge elseif v == 'table' then t[k] = {}\n"
  "  elseif n then t[k] = n else t[k] = v end\n"
  "end\n"
  "local pools = config.check { pools = { p = t } }\n"
  "return pools.p\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int mode, st;
  if (size < 1) return 0;
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dofile(L, CONFIG_LUA) != LUA_OK) { /* -> the module table */
      fprintf(stderr, "cannot load %s: %s\n", CONFIG_LUA, lua_tostring(L, -1));
      abort();
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "config");
    if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=driver") != LUA_OK) abort();
    lua_setfield(L, LUA_REGISTRYINDEX, "driver");
  }
  mode = data[0] % 3;
  lua_settop(L, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, "driver");
  lua_getfield(L, LUA_REGISTRYINDEX, "config");
  lua_pushinteger(L, mode);
  lua_pushlstring(L, (const char *)data + 1, size - 1);
  lua_pushstring(L, SECRET);
  st = lua_pcall(L, 4, 1, 0);
  if (st == LUA_OK) {
    if (lua_type(L, -1) != LUA_TTABLE) {
      fprintf(stderr, "HARNESS: returned a %s, not a table\n", luaL_typename(L, -1));
      abort();
    }
  } else {
    const char *msg;
    if (st != LUA_ERRRUN || lua_type(L, -1) != LUA_TSTRING) {
      fprintf(stderr, "HARNESS: raised status %d with a %s\n", st, luaL_typename(L, -1));
      abort();
    }
    msg = lua_tostring(L, -1);
    /* (an input that itself holds the secret text may see it echoed as an
       option name: only the password the harness adds must never show) */
    if (strstr(msg, SECRET) && !memmem(data + 1, size - 1, SECRET, strlen(SECRET))) {
      fprintf(stderr, "HARNESS: an error shows the password: %s\n", msg);
      abort();
    }
    if (strncmp(msg, CONFIG_LUA ":", strlen(CONFIG_LUA ":")) == 0 ||
        strncmp(msg, "driver:", 7) == 0) {
      /* config.lua raises its own messages with error(msg, 0): a message
         that starts with a source position is a Lua runtime error inside it (indexing
         nil, comparing a number with a string, ...): a bug */
      fprintf(stderr, "HARNESS: config.lua failed internally: %s\n", msg);
      abort();
    }
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT); /* balanced mallocs: libFuzzer's leak check stays cheap */
  return 0;
}
