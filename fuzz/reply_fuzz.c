/*
 * libFuzzer target: reply handling.  Whatever bytes a server sends back --
 * to the handshake (AUTH, SELECT), to obtain, ttl, refresh, release, the
 * BLPOP of a waiter, a plain command, and to the releases deferred by __gc
 * -- go through the hiredis reader and our interpretation of them (csrc/
 * conn.c on_reply, pool.c and lock.c *_finish, push_reply), unchanged: the
 * core's sources are compiled into this harness, driven from an embedded
 * Lua state, and connected over a Unix socket to a tiny server thread that
 * answers every connection with the fuzz input and then closes its side.
 *
 * Input: byte 0 picks the pool (bit 0: with password and db 2, so the
 * handshake replies come first) and the operation (bits 1-3); the rest is
 * the server's answer.  The harness asserts the contract: every call returns
 * its documented values or nil plus a "fluxalock: ..." string, never raises,
 * and ASan/UBSan see no memory error or undefined behaviour.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_fluxalock_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static char sockpath[108];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char answer[1 << 16];
static size_t answer_len;

/* the server: read what the client sends, answer with the input, close */
static void *serve(void *arg) {
  int ls = *(int *)arg;
  for (;;) {
    char buf[4096];
    unsigned char out[sizeof answer];
    size_t n, off = 0;
    int c = accept(ls, NULL, NULL);
    if (c < 0) continue;
    pthread_mutex_lock(&mu);
    n = answer_len;
    memcpy(out, answer, n);
    pthread_mutex_unlock(&mu);
    if (read(c, buf, sizeof buf) > 0) {
      while (off < n) {
        ssize_t w = send(c, out + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += (size_t)w;
      }
    }
    shutdown(c, SHUT_WR);
    while (read(c, buf, sizeof buf) > 0) {} /* until the client lets go */
    close(c);
  }
  return NULL;
}

static const char driver[] =
  "local core, path, which, op = ...\n"
  "local function fine(what, a, b)\n"
  "  if a == nil and b ~= nil and not (type(b) == 'string' and b:find('^fluxalock: ')) then\n"
  "    error('HARNESS: ' .. what .. ' failed without a fluxalock message: ' .. tostring(b))\n"
  "  end\n"
  "end\n"
  "local opts = { path = path, timeout = 0.5, connect_timeout = 0.5 }\n"
  "if which == 1 then opts.password = 'pw' opts.db = 2 end\n"
  "local p = core.pool(opts)\n"
  "if op == 0 or op == 1 then\n"
  "  local l, e = p:obtain('k', 1000)\n"
  "  fine('obtain', l, e)\n"
  "  if l then\n"
  "    assert(math.type(l:fence()) == 'integer')\n"
  "    fine('ttl', l:ttl()) fine('refresh', l:refresh(1)) fine('release', l:release())\n"
  "    fine('release again', l:release())\n"
  "  end\n"
  "elseif op == 2 then\n"
  "  local l, e = p:obtain('k', 1000)\n"
  "  fine('obtain', l, e)\n"
  "  l = nil collectgarbage() collectgarbage()\n" /* __gc: deferred release */
  "  fine('call after gc', p:call { 'PING' })\n"
  "elseif op == 3 then\n"
  "  fine('await', p:await('k', 0.01, 0.3))\n"
  "elseif op == 4 then\n"
  "  local r, e = p:call { 'GET', 'x' }\n"
  "  fine('call', r, e)\n"
  "  fine('call again', p:call { 'HGETALL', 'x' })\n"
  "else\n"
  "  local l, e = p:obtain('k', 1000)\n"
  "  fine('obtain', l, e)\n"
  "  if l then fine('refresh', l:refresh(5, { replace = true })) fine('ttl', l:ttl()) end\n"
  "end\n"
  "p:close()\n";

static void cleanup(void) { unlink(sockpath); }

static void init(void) {
  static int ls;
  struct sockaddr_un a;
  pthread_t t;
  signal(SIGPIPE, SIG_IGN); /* the server may vanish mid-write: EPIPE */
  snprintf(sockpath, sizeof sockpath, "/tmp/fluxalock-fuzz-%ld.sock", (long)getpid());
  unlink(sockpath);
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, sockpath, strlen(sockpath) + 1);
  ls = socket(AF_UNIX, SOCK_STREAM, 0);
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0) {
    perror("fuzz server");
    abort();
  }
  atexit(cleanup);
  if (pthread_create(&t, NULL, serve, &ls) != 0) abort();
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "fluxalock.core", luaopen_fluxalock_core, 0);
  lua_setfield(L, LUA_REGISTRYINDEX, "core");
  if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=driver") != LUA_OK) abort();
  lua_setfield(L, LUA_REGISTRYINDEX, "driver");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size - 1 > sizeof answer) return 0;
  if (!L) init();
  pthread_mutex_lock(&mu);
  memcpy(answer, data + 1, size - 1);
  answer_len = size - 1;
  pthread_mutex_unlock(&mu);
  lua_settop(L, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, "driver");
  lua_getfield(L, LUA_REGISTRYINDEX, "core");
  lua_pushstring(L, sockpath);
  lua_pushinteger(L, data[0] & 1);
  lua_pushinteger(L, (data[0] >> 1) % 6);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    fprintf(stderr, "HARNESS: raised: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  /* free this input's garbage now: with mallocs and frees balanced,
     libFuzzer's per-input leak check has nothing to scan */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
