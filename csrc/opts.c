/*
 * Connection options (fl_opts), and a Sentinel pool's sentinels
 * (fl_sentinels): freed, and deep-copied for the renewal thread, which
 * keeps its own.
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

/* n: the string's length, or (size_t)-1 for strlen (the prefix is bytes:
   a NUL may be one of them) */
static int sdup(char **dst, const char *s, size_t n) {
  *dst = NULL;
  if (!s) return 0;
  if (n == (size_t)-1) n = strlen(s);
  if (!(*dst = malloc(n + 1))) return -1;
  memcpy(*dst, s, n + 1);
  return 0;
}

/* a deep copy of src (the renewal thread keeps its own): 0, or -1 when out
   of memory (then dst holds nothing to free).  A new string option must be
   copied here and freed in fl_opts_free. */
int fl_opts_copy(fl_opts *dst, const fl_opts *src) {
  *dst = *src; /* the scalars and where[] */
  fl_tls_ref(dst->tls); /* shared, counted */
  if (sdup(&dst->host, src->host, (size_t)-1) | sdup(&dst->path, src->path, (size_t)-1) |
      sdup(&dst->username, src->username, (size_t)-1) |
      sdup(&dst->password, src->password, (size_t)-1) |
      sdup(&dst->prefix, src->prefix, src->prefixlen)) {
    fl_opts_free(dst);
    return -1;
  }
  return 0;
}

void fl_sentinels_free(fl_sentinels *s) {
  int i;
  if (!s) return;
  for (i = 0; i < s->n; i++) fl_opts_free(&s->o[i]);
  free(s->o);
  free(s->master);
  free(s);
}

/* a deep copy of s, or NULL when out of memory.  Its 'last' is its own:
   which sentinel answered its owner last (none yet: the first) */
fl_sentinels *fl_sentinels_copy(const fl_sentinels *s) {
  fl_sentinels *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  if (sdup(&c->master, s->master, (size_t)-1) != 0 ||
      !(c->o = calloc((size_t)s->n, sizeof *c->o))) {
    fl_sentinels_free(c);
    return NULL;
  }
  for (; c->n < s->n; c->n++)
    if (fl_opts_copy(&c->o[c->n], &s->o[c->n]) != 0) {
      fl_sentinels_free(c);
      return NULL;
    }
  return c;
}
