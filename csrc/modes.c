/*
 * Modes: counting semaphores (limit), shared holds and fair order, one
 * queued design (docs/modes.md).  A lock in a mode is a fluxalock.Lock like
 * any other; only its commands differ: this file builds them (the scripts
 * are in modes_scripts.h).  Nothing here runs for a plain lock: the fan
 * calls fl_mode_cmd only for a lock whose mode is set.
 */
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "fan.h"

#define HEARTBEAT_MS "800" /* a waiter's entry lives this long past its last
                              try: a dead waiter holds the others up < 1 s */

/* pool:obtain's 4th argument, a mode table { kind = "l"|"s"|"x"|"p", limit =
   N, act = "0"|"1"|"2" [, token] } (the Lua layer checked it): into lk.
   A waiter keeps its place in the queue by trying with the same token:
   the first try writes the lock's token into the table, later ones take
   it from there.  -> 0, or -1 when the table is not a mode */
int fl_mode_read(lua_State *L, int idx, fl_lock *lk) {
  const char *s;
  size_t n;
  lua_getfield(L, idx, "kind");
  s = lua_tolstring(L, -1, &n);
  lk->mode = (unsigned char)(s && n == 1 && strchr("lsxp", s[0]) ? s[0] : 0);
  lua_getfield(L, idx, "act");
  s = lua_tolstring(L, -1, &n);
  lk->act = (unsigned char)(s && n == 1 && strchr("012", s[0]) ? s[0] : '0');
  lua_getfield(L, idx, "limit");
  snprintf(lk->limit, sizeof lk->limit, "%d", (int)lua_tointeger(L, -1));
  lua_getfield(L, idx, "token");
  s = lua_tolstring(L, -1, &n);
  if (s && n == FL_TOKEN_LEN) memcpy(lk->token, s, FL_TOKEN_LEN);
  else {
    lua_pushlstring(L, lk->token, FL_TOKEN_LEN);
    lua_setfield(L, idx, "token");
  }
  lua_pop(L, 4);
  return lk->mode ? 0 : -1;
}

/* the companion keys of a mode, one after the other in one buffer: fence,
   wake, holders, queue, meta; -> the buffer (malloc'd), or NULL */
static char *mode_keys(fl_req *c, const char *key, size_t keylen,
                       const char *k[5], size_t len[5]) {
  static const char *what[3] = {"fence", "wake:", "m:"};
  char *part[3] = {NULL, NULL, NULL}, *buf = NULL;
  size_t plen[3], at = 0;
  int i;
  for (i = 0; i < 3; i++) {
    const char *s = fl_companion(c, key, keylen, what[i], i > 0, &plen[i]);
    if (!s || !(part[i] = malloc(plen[i]))) goto done;
    memcpy(part[i], s, plen[i]);
  }
  if (!(buf = malloc(plen[0] + plen[1] + 3 * (plen[2] + 1)))) goto done;
  for (i = 0; i < 5; i++) {
    int p = i < 2 ? i : 2;
    k[i] = buf + at;
    memcpy(buf + at, part[p], plen[p]);
    len[i] = plen[p];
    if (i >= 2) buf[at + len[i]++] = "hqm"[i - 2];
    at += len[i];
  }
done:
  for (i = 0; i < 3; i++) free(part[i]);
  return buf;
}

static void keys_args(fl_cmd *cmd, const char *lkey, size_t lkeylen, const char *const *k,
                      const size_t *len, const int *which, int n) {
  int i;
  fl_cmd_arg(cmd, lkey, lkeylen);
  for (i = 0; i < n; i++) fl_cmd_arg(cmd, k[which[i]], len[which[i]]);
}

static const int release[] = {1, 2, 3, 4};

/* the command of f->op for the mode lock f->mode, into c (keys.c's
   fl_cmd_* for a plain lock) */
int fl_mode_cmd(const fl_fan *f, fl_req *c) {
  static const int obtain[] = {0, 1, 2, 3, 4}, one[] = {2};
  const fl_lock *lk = f->mode;
  fl_cmd *cmd = &c->cmd;
  const char *k[5];
  size_t len[5];
  char *buf = mode_keys(c, FAN_KEY(f), FAN_KEYLEN(f), k, len);
  if (!buf) return -1;
  free(c->scratch); /* the keys live there until fl_req_begin copies them */
  c->scratch = buf;
  c->scratchcap = 0;
  snprintf(c->num[0], sizeof c->num[0], "%lld", f->ms);
  switch (f->op) {
  case FL_OP_OBTAIN:
    fl_cmd_script(cmd, FL_S_MOBTAIN, 6);
    keys_args(cmd, f->lkey, f->lkeylen, k, len, obtain, 5);
    fl_cmd_arg(cmd, f->token, FL_TOKEN_LEN);
    fl_cmd_arg(cmd, c->num[0], strlen(c->num[0]));
    fl_cmd_arg(cmd, (const char *)&lk->mode, 1);
    fl_cmd_arg(cmd, lk->limit, strlen(lk->limit));
    fl_cmd_arg(cmd, (const char *)&lk->act, 1);
    fl_cmd_arg(cmd, HEARTBEAT_MS, strlen(HEARTBEAT_MS));
    break;
  case FL_OP_RELEASE:
  case FL_OP_CLOSE:
    fl_cmd_script(cmd, FL_S_MRELEASE, 5);
    keys_args(cmd, f->lkey, f->lkeylen, k, len, release, 4);
    fl_cmd_arg(cmd, f->token, FL_TOKEN_LEN);
    fl_cmd_arg(cmd, "1000", 4);
    fl_cmd_arg(cmd, fl_wake_id(), FL_WAKE_ID_LEN);
    break;
  case FL_OP_TTL:
    fl_cmd_script(cmd, FL_S_MTTL, 2);
    keys_args(cmd, f->lkey, f->lkeylen, k, len, one, 1);
    fl_cmd_arg(cmd, f->token, FL_TOKEN_LEN);
    break;
  default: /* FL_OP_REFRESH */
    fl_cmd_script(cmd, FL_S_MREFRESH, 2);
    keys_args(cmd, f->lkey, f->lkeylen, k, len, one, 1);
    fl_cmd_arg(cmd, f->token, FL_TOKEN_LEN);
    fl_cmd_arg(cmd, c->num[0], strlen(c->num[0]));
    fl_cmd_arg(cmd, f->replace ? "1" : "0", 1);
  }
  return 0;
}

/* the release __gc deferred (conn.c append_pending) of a lock in a mode:
   into cmd; -> the buffer its keys are in (the caller frees it once the
   command is sent), or NULL */
char *fl_mode_pending(fl_req *c, const fl_pending *d, fl_cmd *cmd) {
  size_t plen = c->pool->o.prefixlen, len[5];
  const char *k[5];
  char *buf = mode_keys(c, d->key + plen, d->keylen - plen, k, len);
  if (!buf) return NULL;
  fl_cmd_script(cmd, FL_S_MRELEASE, 5);
  keys_args(cmd, d->key, d->keylen, k, len, release, 4);
  fl_cmd_arg(cmd, d->token, FL_TOKEN_LEN);
  fl_cmd_arg(cmd, "1000", 4);
  fl_cmd_arg(cmd, fl_wake_id(), FL_WAKE_ID_LEN);
  return buf;
}

/* the holders' key of the mode lock lk on the server o (the renewal's
   refresh names it: renew.c) -> malloc'd, or NULL */
char *fl_mode_hkey(const fl_opts *o, const fl_lock *lk, size_t *len) {
  size_t blen;
  char *base = fl_companion_dup(o, lk->key + lk->prefixlen, lk->keylen - lk->prefixlen,
                                "m:", &blen);
  char *h = base ? realloc(base, blen + 1) : NULL;
  if (!h) {
    free(base);
    return NULL;
  }
  h[blen] = 'h';
  *len = blen + 1;
  return h;
}

/* core.modekeys(pool, key) -> lock key, holders, queue, meta, and the
   inspect script's body (locker:inspect sends it with pool:call) */
static int mode_modekeys(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  const fl_opts *o = p->group.nnodes > 0 ? &p->group.nodes[0]->o : &p->o;
  size_t keylen, blen;
  const char *key = luaL_checklstring(L, 2, &keylen);
  char *base = fl_companion_dup(o, key, keylen, "m:", &blen);
  int i;
  if (!base) return luaL_error(L, "fluxalock: out of memory");
  lua_pushstring(L, o->prefix);
  lua_pushvalue(L, 2);
  lua_concat(L, 2);
  for (i = 0; i < 3; i++) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, base, blen);
    luaL_addchar(&b, "hqm"[i]);
    luaL_pushresult(&b);
  }
  free(base);
  lua_pushstring(L, fl_scripts[FL_S_INSPECT].body);
  return 5;
}

void fl_mode_open(lua_State *L) {
  lua_pushcfunction(L, mode_modekeys);
  lua_setfield(L, -2, "modekeys");
}
