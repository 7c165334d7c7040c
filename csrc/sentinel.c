/*
 * Sentinel discovery: its rules, once, and no I/O.
 *
 * A round asks each sentinel in turn, starting at the one that answered
 * last, SENTINEL get-master-addr-by-name; an address it names is believed
 * only once ROLE there answers "master", and then that sentinel is the
 * first asked next time.  A sentinel that fails, knows no master, or names
 * a server that is not a master: the next one is asked.  When all failed,
 * the round's message lists each failure, and its code is the first one's.
 *
 * Two drivers run a round (fl_sdisc) with their own I/O: the Lua side
 * (lua/fluxalock/sentinel.lua, each question a pool:call through the
 * request path, so it yields under a host: kind_sentinel.c) and the
 * renewal thread (renew_io.c, on servers of its own).  Both ask what
 * fl_sdisc_cmd says, of the server its step names, and give every answer
 * or failure to fl_sdisc_judge.  The sentinels' options (the pool's
 * timeouts and TLS, sentinel_password) are made here too (fl_sentinels_add).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kind.h"
#include "net.h"

static char *dupn(const char *s, size_t n) {
  char *r = malloc(n + 1);
  if (r) memcpy(r, s, n), r[n] = '\0';
  return r;
}

/* a sentinel at host:port joins s: the options of the pool 'like' (its
   timeouts and TLS), the sentinels' password.  0, or -1 out of memory */
int fl_sentinels_add(fl_sentinels *s, const char *host, size_t len, int port,
                     const char *password, const fl_opts *like) {
  fl_opts *o = &s->o[s->n];
  memset(o, 0, sizeof *o);
  s->n++; /* counted now: fl_sentinels_free frees what was made */
  o->port = port;
  o->connect_timeout = like->connect_timeout;
  o->timeout = o->replica_timeout = like->timeout;
  o->tls = fl_tls_ref(like->tls); /* sentinels speak TLS when the pool does */
  snprintf(o->where, sizeof o->where, memchr(host, ':', len) ? "[%s]:%d" : "%s:%d", host, port);
  if (!(o->host = dupn(host, len)) || !(o->prefix = calloc(1, 1)) ||
      (password && !(o->password = dupn(password, strlen(password)))))
    return -1;
  return 0;
}

/* ---- a round --------------------------------------------------------------- */

void fl_sdisc_start(fl_sdisc *d, fl_sentinels *s) {
  memset(d, 0, sizeof *d);
  d->s = s;
  d->cur = s->n > 0 ? s->last % s->n : 0;
  d->step = s->n > 0 ? FL_SD_SENTINEL : FL_SD_FAILED;
}

/* the question of the step now (FL_SD_SENTINEL: of sentinel d->cur;
   FL_SD_ROLE: of d->host:d->port), into cmd */
void fl_sdisc_cmd(const fl_sdisc *d, fl_cmd *cmd) {
  cmd->argc = 0;
  cmd->script = -1;
  if (d->step == FL_SD_SENTINEL) {
    fl_cmd_arg(cmd, "SENTINEL", 8);
    fl_cmd_arg(cmd, "get-master-addr-by-name", 23);
    fl_cmd_arg(cmd, d->s->master, strlen(d->s->master));
  } else {
    fl_cmd_arg(cmd, "ROLE", 4);
  }
}

/* one failure more for the round's message (the first one's code kept);
   then the next sentinel, or the end of the round */
static void failed(fl_sdisc *d, int code, const char *fmt, ...) {
  va_list ap;
  if (d->len > 0 && d->len + 2 < sizeof d->errs) {
    memcpy(d->errs + d->len, "; ", 3);
    d->len += 2;
  }
  if (d->len + 1 < sizeof d->errs) {
    int n;
    va_start(ap, fmt);
    n = vsnprintf(d->errs + d->len, sizeof d->errs - d->len, fmt, ap);
    va_end(ap);
    if (n > 0) d->len += (size_t)n < sizeof d->errs - d->len ? (size_t)n : sizeof d->errs - d->len - 1;
  }
  if (!d->code) d->code = code;
  if (++d->asked >= d->s->n) {
    d->step = FL_SD_FAILED;
  } else {
    d->cur = (d->cur + 1) % d->s->n;
    d->step = FL_SD_SENTINEL;
  }
}

static int is_string(const redisReply *r) {
  return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

/* a sentinel's answer [host, port]: the candidate; 0, or -1 */
static int address(fl_sdisc *d, const redisReply *r) {
  const redisReply *h, *p;
  char num[8], *end;
  long port;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return -1;
  h = r->element[0];
  p = r->element[1];
  if (!is_string(h) || h->len == 0 || h->len >= sizeof d->host || memchr(h->str, 0, h->len))
    return -1;
  if (p->type == REDIS_REPLY_INTEGER) {
    port = (long)p->integer;
  } else {
    if (!is_string(p) || p->len == 0 || p->len >= sizeof num) return -1;
    memcpy(num, p->str, p->len);
    num[p->len] = '\0';
    port = strtol(num, &end, 10);
    if (*end != '\0') return -1;
  }
  if (port < 1 || port > 65535) return -1;
  memcpy(d->host, h->str, h->len);
  d->host[h->len] = '\0';
  d->port = (int)port;
  return 0;
}

/* the answer r to the question of the step now, or its failure (r NULL:
   the request's message err, its code FL_E_*).  ctx: the fl_sdisc (the
   signature of a fan's judge, fan.h) */
void fl_sdisc_judge(void *ctx, const redisReply *r, const char *err, int code) {
  fl_sdisc *d = ctx;
  const char *where = d->s->o[d->cur].where;
  if (d->step != FL_SD_SENTINEL && d->step != FL_SD_ROLE) return;
  if (!r) {
    failed(d, code ? code : FL_E_IO, "%s", err ? err : "fluxalock: no answer");
  } else if (r->type == REDIS_REPLY_ERROR) {
    failed(d, FL_E_SERVER, "fluxalock: call %s: %s", d->step == FL_SD_SENTINEL ? where : d->host,
           r->str ? r->str : "error");
  } else if (d->step == FL_SD_SENTINEL) {
    if (address(d, r) == 0) d->step = FL_SD_ROLE;
    else failed(d, FL_E_SERVER, "sentinel %s knows no master '%s'", where, d->s->master);
  } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && is_string(r->element[0]) &&
             r->element[0]->len == 6 && memcmp(r->element[0]->str, "master", 6) == 0) {
    d->step = FL_SD_FOUND;
    d->s->last = d->cur; /* asked first next time */
  } else { /* a replica (not yet promoted, or demoted), or no Redis */
    const redisReply *e = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 ? r->element[0] : r;
    failed(d, FL_E_SERVER, "%s:%d is a %.*s", d->host, d->port,
           is_string(e) ? (int)(e->len < 40 ? e->len : 40) : 3, is_string(e) ? e->str : "nil");
  }
}

/* a failed round's message, into out; its code (FL_E_*) */
int fl_sdisc_failure(const fl_sdisc *d, char *out, size_t cap) {
  snprintf(out, cap, "fluxalock: sentinel master '%s': not found (%s)", d->s->master, d->errs);
  return d->code ? d->code : FL_E_IO;
}
