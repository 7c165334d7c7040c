/*
 * A single server: a group of one leg, on the pool's own server.
 */
#include "fan.h"

static int single_nodes(fl_pool *g, const char *lkey, size_t len, fl_pool **out) {
  (void)lkey;
  (void)len;
  out[0] = g;
  return 1;
}

static fl_pool *single_await_node(fl_pool *g, const char *lkey, size_t len) {
  (void)lkey;
  (void)len;
  return g;
}

const fl_kind fl_kind_single = {
  "single", 1, 1, NULL, single_nodes, single_await_node, NULL, NULL, NULL,
  fl_verdict_one, NULL,
};
