/*
 * core.tls{ ca_file=, ca_path=, cert_file=, key_file=, server_name=,
 * verify="full"|"ca"|"none" } -> a TLS object (the files loaded once, into
 * one SSL_CTX), or nil, message, key (the option at fault).  The Lua layer
 * has validated the keys' types; it names the pool in what it raises.
 * core.pool{..., tls = obj} takes a reference: the object may be dropped.
 */
#include <string.h>

#include "net.h"

#define FL_TLS_MT "fluxalock.TLS"

typedef struct tls_ud {
  fl_tls *t;
} tls_ud;

static const char *field(lua_State *L, const char *k) {
  const char *s;
  lua_getfield(L, 1, k);
  s = lua_tostring(L, -1); /* stays alive: the table holds the string */
  lua_pop(L, 1);
  return s;
}

static int tls_new(lua_State *L) {
  fl_tls_conf cf;
  char err[256];
  const char *bad, *verify;
  tls_ud *u;
  luaL_checktype(L, 1, LUA_TTABLE);
  cf.ca_file = field(L, "ca_file");
  cf.ca_path = field(L, "ca_path");
  cf.cert_file = field(L, "cert_file");
  cf.key_file = field(L, "key_file");
  cf.server_name = field(L, "server_name");
  verify = field(L, "verify");
  cf.verify = !verify || strcmp(verify, "full") == 0 ? FL_VERIFY_FULL
              : strcmp(verify, "ca") == 0            ? FL_VERIFY_CA
                                                      : FL_VERIFY_NONE;
  if (verify && cf.verify == FL_VERIFY_NONE && strcmp(verify, "none") != 0)
    luaL_argerror(L, 1, "verify must be \"full\", \"ca\" or \"none\"");
  if (!cf.cert_file != !cf.key_file)
    luaL_argerror(L, 1, "cert_file and key_file go together");
  u = lua_newuserdatauv(L, sizeof *u, 0);
  u->t = NULL;
  luaL_setmetatable(L, FL_TLS_MT);
  if (!(u->t = fl_tls_new(&cf, err, sizeof err, &bad))) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, bad);
    return 3;
  }
  return 1;
}

static int tls_gc(lua_State *L) {
  tls_ud *u = luaL_checkudata(L, 1, FL_TLS_MT);
  fl_tls_unref(u->t);
  u->t = NULL;
  return 0;
}

fl_tls *fl_totls(lua_State *L, int idx) {
  tls_ud *u = luaL_testudata(L, idx, FL_TLS_MT);
  return u ? u->t : NULL;
}

void fl_tls_open(lua_State *L) {
  luaL_newmetatable(L, FL_TLS_MT);
  lua_pushcfunction(L, tls_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, tls_new);
  lua_setfield(L, -2, "tls");
}
