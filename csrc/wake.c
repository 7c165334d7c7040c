/*
 * The wake-up subscription of a pool under a host (Redisson's habit): one
 * connection per pool SUBSCRIBEs to the wake-up channel of each key that
 * has local waiters, and every release (keys.c) publishes on that channel,
 * so a release in another process wakes the key's head waiter by one
 * notification instead of its next backoff step.
 *
 * A group subscribes on its first node: a release publishes on every node
 * of a Redlock group, a Cluster carries a message to every node, and
 * Sentinel's master is the group's one node (its replicas get the message
 * too, so a subscription left on a demoted master still hears it).
 *
 * Nobody owns the subscription's socket: the head waiter that finds it
 * unwatched waits on it for its backoff step (pool:subwait) and hands each
 * message to the Lua layer (core.setnotify's function, with the channel);
 * the other heads park as usual.  Any failure only closes the link: the
 * waiters' backoff stays the safety net, and the next subwait reconnects.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "net.h"

typedef struct fl_sub {
  fl_link *k;
  char **chans;      /* the channels subscribed (malloc'd) */
  size_t *lens;
  int n, cap;
  char **hits;       /* channels messaged since the last delivery */
  size_t *hitlens;
  int nhits, hitcap;
  const void *reader; /* the waiter watching the socket */
  double rdl;         /* until when */
} fl_sub;


void fl_sub_free(fl_pool *p) {
  fl_sub *s = p->sub;
  int i;
  if (!s) return;
  fl_link_free(s->k);
  for (i = 0; i < s->n; i++) free(s->chans[i]);
  for (i = 0; i < s->nhits; i++) free(s->hits[i]);
  free(s->chans);
  free(s->lens);
  free(s->hits);
  free(s->hitlens);
  free(s);
  p->sub = NULL;
}

static int send_cmd(fl_link *k, const char *word, const char *ch, size_t len) {
  const char *argv[2];
  size_t lens[2];
  argv[0] = word;
  lens[0] = strlen(word);
  argv[1] = ch;
  lens[1] = len;
  return fl_link_out(k, 2, argv, lens);
}

/* connected (again): subscribe to every channel */
static void sub_connected(fl_link *k) {
  fl_sub *s = k->ctx;
  int i;
  if (!s) return;
  for (i = 0; i < s->n; i++)
    if (send_cmd(k, "SUBSCRIBE", s->chans[i], s->lens[i]) != 0) {
      fl_link_close(k, "out of memory");
      return;
    }
}

/* ["message", channel, payload]: remember the channel for delivery */
static void sub_message(fl_link *k, redisReply *r) {
  fl_sub *s = k->ctx;
  if (s && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
      r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING &&
      r->element[0]->len == 7 && memcmp(r->element[0]->str, "message", 7) == 0 &&
      !(r->element[2]->type == REDIS_REPLY_STRING && r->element[2]->len == FL_WAKE_ID_LEN &&
        memcmp(r->element[2]->str, fl_wake_id(), FL_WAKE_ID_LEN) == 0)) {
    if (s->nhits == s->hitcap) {
      int cap = s->hitcap ? 2 * s->hitcap : 8;
      char **h = realloc(s->hits, (size_t)cap * sizeof *h);
      size_t *l = h ? realloc(s->hitlens, (size_t)cap * sizeof *l) : NULL;
      if (h) s->hits = h;
      if (l) {
        s->hitlens = l;
        s->hitcap = cap;
      }
    }
    if (s->nhits < s->hitcap && (s->hits[s->nhits] = malloc(r->element[1]->len + 1))) {
      memcpy(s->hits[s->nhits], r->element[1]->str, r->element[1]->len);
      s->hitlens[s->nhits++] = r->element[1]->len;
    }
  }
  /* subscribe confirmations, errors (an ACL without channels): nothing */
  freeReplyObject(r);
}

/* the server that carries p's subscription */
static fl_pool *sub_server(fl_pool *p) { return p->group.nnodes ? p->group.nodes[0] : p; }

static fl_sub *sub_of(fl_pool *p) {
  if (!p->sub) {
    fl_sub *s = calloc(1, sizeof *s);
    if (!s || !(s->k = calloc(1, sizeof *s->k))) {
      free(s);
      return NULL;
    }
    s->k->pool = sub_server(p); /* its options, its counters */
    s->k->ctx = s;
    s->k->on_ready = sub_connected;
    s->k->on_message = sub_message;
    p->sub = s;
  }
  return p->sub;
}

/* move the subscription on (connect, send, read) without waiting */
static void sub_drive(fl_pool *p, double now) {
  fl_sub *s = p->sub;
  if (!s || !s->n) return;
  if (s->k->state == FL_LK_CLOSED && (s->k->net || fl_link_connect(s->k, now) != 0))
    return; /* (a closed link still watched is reaped first) */
  fl_link_drive(s->k, NULL);
}

/* hand the channels messaged to the Lua layer's notify function, in the
   order they came; 1 when one of them woke the waiter at 2 (the caller).
   A hit leaves s only once its channel is a Lua string: a memory error in
   a push leaves the rest in s (the next delivery, or fl_sub_free) */
static int deliver(lua_State *L, fl_sub *s) { /* the pool userdata is at 1 */
  int self = 0;
  while (s->nhits > 0) {
    int fn = lua_getfield(L, LUA_REGISTRYINDEX, FL_NOTIFY) == LUA_TFUNCTION;
    lua_pushlstring(L, s->hits[0], s->hitlens[0]);
    free(s->hits[0]);
    s->nhits--;
    memmove(s->hits, s->hits + 1, (size_t)s->nhits * sizeof *s->hits);
    memmove(s->hitlens, s->hitlens + 1, (size_t)s->nhits * sizeof *s->hitlens);
    if (fn) {
      lua_pushvalue(L, 1);
      if (lua_pcall(L, 2, 1, 0) == LUA_OK && lua_rawequal(L, -1, 2)) self = 1;
      lua_pop(L, 1);
    } else {
      lua_pop(L, 2);
    }
  }
  return self;
}

/* pool:watch(key) -> channel: subscribe to key's wake-up channel */
static int pool_watch(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  size_t keylen, len;
  const char *key = luaL_checklstring(L, 2, &keylen);
  char *ch = fl_companion_dup(&sub_server(p)->o, key, keylen, "wake:", &len);
  fl_sub *s = sub_of(p);
  int i;
  if (!ch || !s) {
    free(ch);
    return luaL_error(L, "fluxalock: out of memory");
  }
  for (i = 0; i < s->n; i++)
    if (s->lens[i] == len && memcmp(s->chans[i], ch, len) == 0) break;
  if (i == s->n) {
    if (s->n == s->cap) {
      int cap = s->cap ? 2 * s->cap : 8;
      char **c = realloc(s->chans, (size_t)cap * sizeof *c);
      size_t *l = c ? realloc(s->lens, (size_t)cap * sizeof *l) : NULL;
      if (c) s->chans = c;
      if (!l) {
        free(ch);
        return luaL_error(L, "fluxalock: out of memory");
      }
      s->lens = l;
      s->cap = cap;
    }
    s->chans[s->n] = ch;
    s->lens[s->n++] = len;
    if (s->k->state == FL_LK_READY) send_cmd(s->k, "SUBSCRIBE", ch, len);
    lua_pushlstring(L, ch, len);
    return 1;
  }
  lua_pushlstring(L, ch, len);
  free(ch);
  return 1;
}

/* pool:unwatch(channel): no local waiter left for it */
static int pool_unwatch(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  size_t len;
  const char *ch = luaL_checklstring(L, 2, &len);
  fl_sub *s = p->sub;
  int i;
  if (!s) return 0;
  for (i = 0; i < s->n; i++)
    if (s->lens[i] == len && memcmp(s->chans[i], ch, len) == 0) {
      if (s->k->state == FL_LK_READY) send_cmd(s->k, "UNSUBSCRIBE", ch, len);
      free(s->chans[i]);
      s->chans[i] = s->chans[s->n - 1];
      s->lens[i] = s->lens[s->n - 1];
      s->n--;
      break;
    }
  return 0;
}

static int subwait_k(lua_State *L, int status, lua_KContext ctx) {
  fl_pool *p = (fl_pool *)ctx;
  (void)status; /* a raise in the host's wait: the backoff goes on */
  if (p->sub) {
    if (p->sub->reader == lua_topointer(L, 2)) {
      p->sub->reader = NULL;
      p->sub->k->watched = 0;
      fl_link_reap(p->sub->k);
    }
    sub_drive(p, fl_now());
    deliver(L, p->sub);
  }
  lua_settop(L, 0);
  return 0;
}

/* pool:subwait(waiter, seconds): a head waiter's backoff step under a
   parking host: on the subscription's socket when nobody watches it,
   else parked on the waiter (a release in this process unparks it) */
static int pool_subwait(lua_State *L) {
  fl_pool *p = fl_checkpool(L, 1);
  lua_Number secs = luaL_checknumber(L, 3);
  double now = fl_now();
  fl_sub *s = p->sub;
  int fd;
  luaL_checkany(L, 2);
  lua_settop(L, 3);
  if (!p->has_park) return luaL_error(L, "fluxalock: subwait needs a host with park");
  lua_getiuservalue(L, 1, 1); /* 4: the host */
  sub_drive(p, now);
  /* a message read meanwhile may be this waiter's own wake-up: then it
     must not sleep its step on a socket that has nothing more to say */
  if (s && deliver(L, s)) return 0;
  fd = s && s->k->net && s->k->state != FL_LK_CLOSED ? fl_net_fd(s->k->net) : -1;
  if (fd >= 0 && (!s->reader || now >= s->rdl + FL_READER_GRACE)) {
    s->reader = lua_topointer(L, 2);
    s->rdl = now + secs;
    s->k->watched = 1; /* closed meanwhile: the descriptor waits for us */
    int efd = fl_link_hostfd(s->k, s->k->events); /* a reset never reaches the host */
    lua_getfield(L, 4, "wait");
    lua_pushinteger(L, efd >= 0 ? efd : fd);
    lua_pushstring(L, efd < 0 && s->k->events == POLLOUT ? "w" : "r");
    lua_pushnumber(L, secs);
    lua_pushvalue(L, 2); /* a local release unparks this wait too */
  } else {
    lua_getfield(L, 4, "park");
    lua_pushvalue(L, 2);
    lua_pushnumber(L, secs);
    return subwait_k(L, lua_pcallk(L, 2, 0, 0, (lua_KContext)p, subwait_k), (lua_KContext)p);
  }
  return subwait_k(L, lua_pcallk(L, 4, 0, 0, (lua_KContext)p, subwait_k), (lua_KContext)p);
}

void fl_sub_open(lua_State *L) {
  static const luaL_Reg meth[] = {{"watch", pool_watch}, {"unwatch", pool_unwatch},
                                  {"subwait", pool_subwait}, {NULL, NULL}};
  luaL_getmetatable(L, FL_POOL_MT);
  lua_getfield(L, -1, "__index");
  luaL_setfuncs(L, meth, 0);
  lua_pop(L, 2);
}
