/*
 * Redlock: N independent masters.  Every request goes to all of them at
 * once; a lock is obtained when a majority (the quorum) set it within the
 * validity window (ttl - elapsed - drift, drift = 1% of ttl + 2 ms).  A
 * failed obtain is undone on every node.  release/refresh go to all nodes,
 * ttl is the time a quorum still holds the lock.  A wait asks one node, in
 * turn: its wake-up list is only a hint, so a node down does not end it.
 * Redlock gives no fence: each node's counter is its own.
 */
#include "fan.h"

static void redlock_setup(lua_State *L, fl_pool *g, int n) {
  int i;
  luaL_argcheck(L, n <= FL_MAXNODES, 3, "at most 16 Redlock nodes");
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    fl_group_add_pool(L, g, -1);
    lua_pop(L, 1);
  }
}

static int redlock_nodes(fl_pool *g, const char *lkey, size_t len, fl_pool **out) {
  int i;
  (void)lkey;
  (void)len;
  for (i = 0; i < g->group.nnodes; i++) out[i] = g->group.nodes[i];
  return g->group.nnodes;
}

/* wait on a node that answered lately (an open connection), in turn */
static fl_pool *redlock_await_node(fl_pool *g, const char *lkey, size_t len) {
  int i, k, pick = -1;
  (void)lkey;
  (void)len;
  for (i = 0; i < g->group.nnodes && pick < 0; i++) {
    int j = (int)((g->group.rotate + (unsigned long)i) % (unsigned long)g->group.nnodes);
    for (k = 0; k < g->group.nodes[j]->nlinks; k++)
      if (g->group.nodes[j]->links[k]->state == FL_LK_READY && fl_link_idle(g->group.nodes[j]->links[k]))
        pick = j;
  }
  g->group.rotate++;
  return g->group.nodes[pick < 0 ? 0 : pick];
}

static int quorum(const fl_fan *f) { return f->nlegs / 2 + 1; }

/* once a majority has obtained, released or refreshed, the legs still
   running cannot change the answer: they are abandoned, so one slow node
   does not eat into the validity */
static void redlock_settle(fl_fan *f) {
  int i, ok = 0, running = 0;
  if (f->op == FL_OP_TTL || f->op == FL_OP_AWAIT) return;
  for (i = 0; i < f->nlegs; i++) {
    if (f->legs[i].st == LEG_DONE && f->legs[i].n > 0) ok++;
    if (f->legs[i].st == LEG_RUN || f->legs[i].st == LEG_PAUSE) running++;
  }
  if (!running || ok < quorum(f)) return;
  for (i = 0; i < f->nlegs; i++) {
    fl_leg *l = &f->legs[i];
    if (l->st != LEG_RUN && l->st != LEG_PAUSE) continue;
    /* its command still goes out (a release the majority did not need
       must still reach its node), its late reply is dropped; an obtain
       goes once more as EVAL behind, against NOSCRIPT (conn.c) */
    if (l->c && l->c->link) fl_link_send(l->c->link);
    if (l->c && f->op == FL_OP_OBTAIN) l->c->resend = 1;
    fl_leg_fail(l, FL_E_IO, "fluxalock: %s %s: not awaited (a majority answered)", fl_opname(f->op),
                l->node->o.where);
  }
}

static void count(const fl_fan *f, int *ok, int *errs, const char **first, int *code) {
  int i;
  *ok = *errs = 0;
  *first = NULL;
  *code = FL_E_IO;
  for (i = 0; i < f->nlegs; i++) {
    const fl_leg *l = &f->legs[i];
    if (l->st == LEG_ERR) {
      (*errs)++;
      if (!*first) *first = l->err, *code = l->code;
    } else if (l->st == LEG_DONE && l->n > 0) {
      (*ok)++;
    }
  }
}

/* the time a quorum still holds it: the q-th largest ttl */
static int ttl_verdict(lua_State *L, fl_fan *f, fl_lock *lk, int errs, const char *first,
                       int code) {
  long long v[FL_MAXNODES];
  int h = 0, q = quorum(f), a, b;
  for (a = 0; a < f->nlegs; a++)
    if (f->legs[a].st == LEG_DONE && f->legs[a].n >= 0) v[h++] = f->legs[a].n;
  if (h >= q) {
    for (a = 0; a < h; a++)
      for (b = a + 1; b < h; b++)
        if (v[b] > v[a]) { long long t = v[a]; v[a] = v[b]; v[b] = t; }
    lua_pushnumber(L, (lua_Number)v[q - 1] / 1000.0);
    return 1;
  }
  if (h + errs >= q) return fl_fan_failure(L, f, errs, first, code);
  lk->held = 0;
  lua_pushnumber(L, 0);
  return 1;
}

/* the time left of the validity window, in ms */
static double validity(const fl_fan *f) {
  return (double)f->ms - (fl_now() - f->start) * 1000.0 - ((double)f->ms * 0.01 + 2);
}

static int redlock_verdict(lua_State *L, fl_fan *f) {
  fl_lock *lk = lua_touserdata(L, FAN_LOCK);
  int ok, errs, code, q = quorum(f);
  const char *first;
  count(f, &ok, &errs, &first, &code);
  switch (f->op) {
  case FL_OP_OBTAIN:
    if (ok >= q && validity(f) > 0) {
      lk->held = 1;
      lk->fence = 0;
      lua_pushvalue(L, FAN_LOCK);
      return 1;
    }
    return fl_fan_undo(L, f, errs > f->nlegs - q ? errs : 0, first, code);
  case FL_OP_RELEASE:
    if (f->phase > 0) return fl_verdict_one(L, f); /* the undo's end */
    /* fallthrough */
  case FL_OP_CLOSE:
    if (ok >= q) break;
    if (ok + errs >= q) { /* unknown: the caller may try again */
      lk->held = 1;
      return fl_fan_failure(L, f, errs, first, code);
    }
    ok = 0;
    break;
  case FL_OP_TTL:
    return ttl_verdict(L, f, lk, errs, first, code);
  case FL_OP_REFRESH:
    if (ok >= q && validity(f) <= 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "fluxalock: refresh %s: took longer than the new ttl allows",
                      f->g->o.where);
      lua_pushstring(L, fl_code_name(FL_E_QUORUM)); /* no majority in time */
      return 3;
    }
    if (ok >= q) break;
    if (ok + errs >= q) return fl_fan_failure(L, f, errs, first, code);
    lk->held = 0;
    ok = 0;
    break;
  default: /* FL_OP_AWAIT: one node's hint; its failure is a plain "no" */
    ok = f->legs[0].st == LEG_DONE && f->legs[0].n;
    lua_pushboolean(L, ok);
    return 1;
  }
  lua_pushboolean(L, ok >= q);
  return 1;
}

const fl_kind fl_kind_redlock = {
  "redlock", 0, 0, redlock_setup, redlock_nodes, redlock_await_node, NULL, NULL,
  redlock_settle, redlock_verdict, NULL,
};
