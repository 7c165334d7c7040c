/*
 * embed: a C program that embeds Lua 5.4 the way nginx does, runs Lua
 * scripts as coroutines from its own poll(2) loop, and lets them contend for
 * fluxalock locks.
 *
 *   embed [-n copies] script.lua...
 *
 * Each script is started 'copies' times (default 1), each copy a coroutine
 * of one lua_State that gets (copy number, script name) as '...'.  The
 * program configures fluxalock with a custom host before starting them:
 *
 *   fluxalock.configure { host = { wait = embed.wait, park = embed.park,
 *                                  unpark = embed.unpark } }
 *
 * embed.wait(fd, events, timeout) yields the coroutine to this loop, which
 * polls the fd (with every other waiting coroutine's fd) and resumes it when
 * the fd is ready or the timeout has passed.  embed.sleep(seconds) yields the
 * same way without a fd.  embed.park(key, timeout) sleeps until
 * embed.unpark(key) marks the coroutine parked on key ready (the loop
 * resumes it, never unpark itself), or the timeout has passed: that is what
 * lets fluxalock's coroutines share a few connections.  embed.enter(key) / embed.leave(key) count the
 * coroutines inside a critical section per key; two at once is an overlap.
 *
 * The program checks its own result: it exits 0 only when every coroutine
 * finished without error, critical sections were entered, no two ever
 * overlapped, and no single resume kept the loop busy for long (a blocking
 * lock call would).  Redis: FLUXALOCK_URL (fluxalock's default pool).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MAX_COS 1024
#define MAX_STALL 0.25 /* seconds one resume may keep the loop (generous) */

typedef struct co {
  lua_State *L;   /* the coroutine */
  int ref;        /* anchors it in the registry */
  const char *name;
  int fd;         /* waiting for this fd, or -1 (sleep / ready) */
  short events;
  double deadline; /* resume at the latest then */
  int ready, done;
} co;

static co task[MAX_COS];
static int ntask;
static long overlaps, entries;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}



/* embed.sleep(seconds): yield to the loop for a while */
static int l_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  if (!lua_isyieldable(L))
    return luaL_error(L, "cannot sleep outside a coroutine of the embed loop");
  lua_settop(L, 0);
  lua_pushinteger(L, -1);
  lua_pushliteral(L, "");
  lua_pushnumber(L, s);
  return lua_yield(L, 3);
}

/* after a park: forget the key unless someone else parked on it since */
static int park_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_pushvalue(L, 1);
  lua_gettable(L, lua_upvalueindex(1));
  if (lua_tothread(L, -1) == L) {
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    lua_settable(L, lua_upvalueindex(1));
  }
  return 0;
}

/* embed.park(key, timeout): parked[key] = this coroutine, then sleep */
static int l_park(lua_State *L) {
  lua_Number s;
  luaL_checkany(L, 1);
  s = luaL_checknumber(L, 2);
  if (!lua_isyieldable(L))
    return luaL_error(L, "cannot park outside a coroutine of the embed loop");
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  lua_pushthread(L);
  lua_settable(L, lua_upvalueindex(1));
  lua_pushinteger(L, -1); /* the key stays below what the loop reads */
  lua_pushliteral(L, "");
  lua_pushnumber(L, s);
  return lua_yieldk(L, 3, 0, park_k);
}

/* embed.unpark(key): the coroutine parked on key is ready for the loop */
static int l_unpark(lua_State *L) {
  lua_State *t;
  int i;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  lua_gettable(L, lua_upvalueindex(1));
  if (!(t = lua_tothread(L, -1))) return 0;
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_settable(L, lua_upvalueindex(1));
  for (i = 0; i < ntask; i++)
    if (task[i].L == t && !task[i].done) task[i].ready = 1;
  return 0;
}

/* embed.wait(fd, events, timeout [, key]): the fluxalock host contract;
   with a key, embed.unpark(key) ends the wait too */
static int l_wait(lua_State *L) {
  luaL_checkinteger(L, 1);
  luaL_checkstring(L, 2);
  luaL_checknumber(L, 3);
  if (!lua_isyieldable(L))
    return luaL_error(L, "cannot wait outside a coroutine of the embed loop");
  if (lua_isnoneornil(L, 4)) {
    lua_settop(L, 3);
    return lua_yield(L, 3); /* the loop reads fd, events, timeout */
  }
  lua_settop(L, 4);
  lua_pushvalue(L, 4);
  lua_pushthread(L);
  lua_settable(L, lua_upvalueindex(1));
  lua_rotate(L, 1, 1); /* the key first, below what the loop reads */
  return lua_yieldk(L, 3, 0, park_k);
}

/* holders per key live in a table (upvalue 1) */
static int l_enter(lua_State *L) {
  lua_Integer n;
  luaL_checkstring(L, 1);
  lua_pushvalue(L, 1);
  lua_gettable(L, lua_upvalueindex(1));
  n = lua_tointeger(L, -1) + 1;
  lua_pushvalue(L, 1);
  lua_pushinteger(L, n);
  lua_settable(L, lua_upvalueindex(1));
  entries++;
  if (n > 1) overlaps++;
  return 0;
}

static int l_leave(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 1);
  lua_gettable(L, lua_upvalueindex(1));
  lua_pushinteger(L, lua_tointeger(L, -1) - 1);
  lua_remove(L, -2);
  lua_settable(L, lua_upvalueindex(1));
  return 0;
}

static void open_embed(lua_State *L) {
  static const luaL_Reg f[] = {{"sleep", l_sleep}, {NULL, NULL}};
  luaL_newlib(L, f);
  lua_newtable(L); /* parked coroutines by key */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_wait, 1);
  lua_setfield(L, -3, "wait");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_park, 1);
  lua_setfield(L, -3, "park");
  lua_pushcclosure(L, l_unpark, 1);
  lua_setfield(L, -2, "unpark");
  lua_newtable(L); /* holders */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_enter, 1);
  lua_setfield(L, -3, "enter");
  lua_pushcclosure(L, l_leave, 1);
  lua_setfield(L, -2, "leave");
  lua_setglobal(L, "embed");
}

/* require "fluxalock" and hand it this loop's wait function */
static int setup(lua_State *L) {
  static const char code[] =
      "local fluxalock = require 'fluxalock'\n"
      "fluxalock.configure { host = { wait = embed.wait, park = embed.park,\n"
      "                               unpark = embed.unpark } }\n";
  if (luaL_loadbuffer(L, code, sizeof code - 1, "=setup") != LUA_OK ||
      lua_pcall(L, 0, 0, 0) != LUA_OK) {
    fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
    return -1;
  }
  return 0;
}

static int start(lua_State *L, const char *file, int copy) {
  co *c;
  if (ntask == MAX_COS) {
    fprintf(stderr, "embed: too many coroutines (max %d)\n", MAX_COS);
    return -1;
  }
  c = &task[ntask];
  c->L = lua_newthread(L);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->name = file;
  c->fd = -1;
  c->ready = 1;
  c->done = 0;
  if (luaL_loadfile(c->L, file) != LUA_OK) {
    fprintf(stderr, "embed: %s\n", lua_tostring(c->L, -1));
    return -1;
  }
  lua_pushinteger(c->L, copy);
  lua_pushstring(c->L, file);
  ntask++;
  return 0;
}

/* resume c once; returns -1 if it failed */
static int step(lua_State *L, co *c, double *stall) {
  /* a new coroutine gets its arguments; a suspended one returns nothing
     from wait()/sleep() */
  int nres = 0, st, nargs = lua_status(c->L) == LUA_YIELD ? 0 : lua_gettop(c->L) - 1;
  double t0 = now(), took;
  c->ready = 0;
  st = lua_resume(c->L, L, nargs, &nres);
  took = now() - t0;
  if (took > *stall) *stall = took;
  if (st == LUA_OK) {
    c->done = 1;
    lua_settop(c->L, 0);
    return 0;
  }
  if (st != LUA_YIELD) {
    luaL_traceback(L, c->L, lua_tostring(c->L, -1), 0);
    fprintf(stderr, "embed: %s: %s\n", c->name, lua_tostring(L, -1));
    lua_pop(L, 1);
    /* close its pending <close> variables: a lock is released (queued,
       since a dead coroutine cannot yield) instead of waiting for __gc */
#if LUA_VERSION_NUM == 504 && LUA_VERSION_RELEASE_NUM >= 50406
    lua_closethread(c->L, L);
#else
    lua_resetthread(c->L);
#endif
    c->done = 1;
    return -1;
  }
  if (nres != 3 || !lua_isinteger(c->L, -3)) {
    fprintf(stderr, "embed: %s yielded something other than embed.wait/sleep\n", c->name);
    c->done = 1;
    return -1;
  }
  c->fd = (int)lua_tointeger(c->L, -3);
  c->events = strcmp(lua_tostring(c->L, -2), "w") == 0 ? POLLOUT : POLLIN;
  c->deadline = now() + lua_tonumber(c->L, -1);
  lua_pop(c->L, nres); /* wait()/sleep() return nothing when resumed */
  return 0;
}

static int run(lua_State *L, double *stall) {
  static struct pollfd pfd[MAX_COS];
  static int who[MAX_COS];
  int failed = 0;
  for (;;) {
    int i, n = 0, live = 0, ms, ready = 0;
    double t, first = -1;
    for (i = 0; i < ntask; i++) /* resume everything that is ready */
      if (task[i].ready && !task[i].done && step(L, &task[i], stall) != 0) failed++;
    for (i = 0; i < ntask; i++) {
      if (task[i].done) continue;
      live++;
      ready |= task[i].ready; /* unparked during this round */
      if (first < 0 || task[i].deadline < first) first = task[i].deadline;
      if (task[i].fd >= 0) {
        pfd[n].fd = task[i].fd;
        pfd[n].events = task[i].events;
        pfd[n].revents = 0;
        who[n++] = i;
      }
    }
    if (!live) return failed;
    t = first - now();
    ms = t <= 0 || ready ? 0 : (int)(t * 1000.0) + 1;
    if (poll(pfd, (nfds_t)n, ms) < 0 && errno != EINTR) {
      perror("embed: poll");
      return failed + 1;
    }
    for (i = 0; i < n; i++)
      if (pfd[i].revents) task[who[i]].ready = 1;
    t = now();
    for (i = 0; i < ntask; i++)
      if (!task[i].done && task[i].deadline <= t) task[i].ready = 1;
  }
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, copies = 1, first = 1, failed, finished = 0;
  double stall = 0, t0;
  if (argc > 2 && strcmp(argv[1], "-n") == 0) {
    copies = atoi(argv[2]);
    first = 3;
  }
  if (first >= argc || copies < 1) {
    fprintf(stderr, "usage: embed [-n copies] script.lua...\n");
    return 2;
  }
  if (!(L = luaL_newstate())) return 1;
  luaL_openlibs(L);
  open_embed(L);
  if (setup(L) != 0) {
    lua_close(L);
    return 1;
  }
  for (i = first; i < argc; i++) {
    int k;
    for (k = 1; k <= copies; k++)
      if (start(L, argv[i], k) != 0) {
        lua_close(L);
        return 1;
      }
  }
  t0 = now();
  failed = run(L, &stall);
  for (i = 0; i < ntask; i++) finished += task[i].done;
  printf("embed: %d coroutines, %d failed, %ld critical sections, %ld overlaps, "
         "%.3f s, longest resume %.1f ms\n",
         ntask, failed, entries, overlaps, now() - t0, stall * 1000.0);
  lua_close(L); /* also flushes releases a __gc deferred */
  if (failed || finished != ntask || entries == 0 || overlaps || stall > MAX_STALL) {
    fprintf(stderr, "embed: FAILED\n");
    return 1;
  }
  return 0;
}
