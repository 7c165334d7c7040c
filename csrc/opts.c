/*
 * Connection options (fl_opts): freed, and deep-copied for the renewal
 * thread, which keeps its own.
 */
#include <stdlib.h>
#include <string.h>

#include "fluxalock.h"
#include "net.h"

void fl_opts_free(fl_opts *o) {
  free(o->host);
  free(o->path);
  free(o->username);
  if (o->password) { /* do not leave the secret in freed memory */
    memset(o->password, 0, strlen(o->password));
    free(o->password);
  }
  free(o->prefix);
  fl_tls_unref(o->tls);
  o->host = o->path = o->username = o->password = o->prefix = NULL;
  o->tls = NULL;
}

static int sdup(char **dst, const char *s) {
  size_t n;
  *dst = NULL;
  if (!s) return 0;
  n = strlen(s) + 1;
  if (!(*dst = malloc(n))) return -1;
  memcpy(*dst, s, n);
  return 0;
}

/* a deep copy of src (the renewal thread keeps its own): 0, or -1 when out
   of memory (then dst holds nothing to free).  A new string option must be
   copied here and freed in fl_opts_free. */
int fl_opts_copy(fl_opts *dst, const fl_opts *src) {
  *dst = *src; /* the scalars and where[] */
  fl_tls_ref(dst->tls); /* shared, counted */
  if (sdup(&dst->host, src->host) | sdup(&dst->path, src->path) |
      sdup(&dst->username, src->username) | sdup(&dst->password, src->password) |
      sdup(&dst->prefix, src->prefix)) {
    fl_opts_free(dst);
    return -1;
  }
  return 0;
}
