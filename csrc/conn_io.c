/*
 * fl_link: one socket on a transport of net.h, shared by many requests.
 *
 * Bytes go out in the order requests were queued (RESP encoded here: the
 * transport sends them, never hiredis, whose write(2) can raise SIGPIPE)
 * and replies come back in that order, parsed by a hiredis reader fed with
 * what the transport received (the reader does no I/O).  Each reply goes to
 * the entry at the head of the FIFO: a live request (conn.c decides what
 * the reply means to it), or a ghost whose replies are dropped.
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "net.h"

/*
 * Replies never need big arrays (the largest is a CLUSTER SLOTS map), but
 * hiredis allocates an array's element table as soon as it reads the header:
 * a server answering "*322222222" (garbage, or not Redis at all) would make
 * us reserve gigabytes before a single element arrived.  hiredis 1.x has a
 * limit for that; 0.14 has none, so its array constructor is wrapped.
 */
#define MAX_ELEMENTS (1 << 20)

#if HIREDIS_MAJOR >= 1
void fl_reader_cap(redisReader *r) { r->maxelements = MAX_ELEMENTS; }
#else
static redisReplyObjectFunctions capped;
static void *(*plain_array)(const redisReadTask *, int);

static void *capped_array(const redisReadTask *t, int n) {
  return n > MAX_ELEMENTS ? NULL : plain_array(t, n); /* NULL: a reader error */
}

static void cap_make(void) { /* the same default functions for every reader */
  redisReader *t = redisReaderCreate();
  if (!t) return; /* out of memory: readers keep the default (uncapped) */
  capped = *t->fn;
  redisReaderFree(t);
  plain_array = capped.createArray;
  capped.createArray = capped_array;
}

/* the first call sets up the shared table, once per process (two Lua
   states on two threads may connect at once) */
void fl_reader_cap(redisReader *r) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, cap_make);
  if (plain_array) r->fn = &capped;
}
#endif

int fl_link_idle(const fl_link *k) { return k->qlen == 0; }

/* k's epoll descriptor stops watching the descriptor it watched (a
   closed one, or the resolver's once the socket is there) */
static void unwatch(fl_link *k) {
  if (k->eopen && k->esock >= 0) epoll_ctl(k->efd, EPOLL_CTL_DEL, k->esock, NULL);
  k->esock = -1;
}

static void release_io(fl_link *k) {
  unwatch(k);
  if (k->net) fl_net_close(k->net);
  if (k->rd) redisReaderFree(k->rd);
  k->net = NULL;
  k->rd = NULL;
  if (k->out) memset(k->out, 0, k->outlen); /* AUTH's password */
  k->outlen = k->outpos = 0;
  if (k->outcap > 65536) { /* a huge key passed: do not keep its buffer */
    free(k->out);
    k->out = NULL;
    k->outcap = 0;
  }
}

/* a link closed while a coroutine waits on its socket keeps the descriptor
   (shut down, so that wait ends at once) until that reader is back: an
   event loop must not have a descriptor it watches closed under it */
void fl_link_reap(fl_link *k) {
  if (k->state == FL_LK_CLOSED && k->net && !k->reader && !k->watched) release_io(k);
}

/* close k; every request on it fails with "<op> <where>: why" (op: its
   own, "connect" while connecting, or the given one) */
static void close_code(fl_link *k, const char *op, const char *why, int code) {
  int connecting = k->state == FL_LK_CONNECTING;
  fl_pool *p = k->pool;
  k->state = FL_LK_CLOSED;
  while (k->qlen > 0) {
    fl_req *c = k->q[k->qhead].c;
    k->qhead = (k->qhead + 1) % k->qcap;
    k->qlen--;
    if (!c || c->state != FL_RQ_QUEUED) continue;
    fl_req_fail(c, op ? op : connecting ? "connect" : c->op, "%s", why);
    if (code) c->code = (unsigned char)code;
    fl_wake(p, c->wkey);
  }
  k->qhead = 0;
  memset(k->keys, 0, sizeof k->keys);
  k->handshake = 0;
  k->doomed = 0;
  if ((k->reader || k->watched) && k->net) { /* see fl_link_reap */
    shutdown(fl_net_fd(k->net), SHUT_RDWR);
    return;
  }
  k->reader = NULL;
  release_io(k);
}

static void close_as(fl_link *k, const char *op, const char *why) { close_code(k, op, why, 0); }

void fl_link_close(fl_link *k, const char *why) { close_as(k, NULL, why); }

void fl_link_free(fl_link *k) {
  if (!k) return;
  k->reader = NULL;
  k->watched = 0;
  close_as(k, NULL, "pool closed");
  if (k->eopen) close(k->efd);
  free(k->out);
  free(k->q);
  free(k);
}

/* the decimal digits of v at p; returns the end (RESP's counts and
   lengths: a request's headers are most of what sprintf would cost it) */
static char *put_count(char *p, size_t v) {
  char d[24];
  int n = 0;
  do d[n++] = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  while (n > 0) *p++ = d[--n];
  return p;
}

/* RESP: *<argc>\r\n then $<len>\r\n<bytes>\r\n per argument */
int fl_link_out(fl_link *k, int argc, const char *const *argv, const size_t *len) {
  size_t need = 16;
  char *p;
  int i;
  for (i = 0; i < argc; i++) need += len[i] + 32;
  if (k->outpos == k->outlen) k->outpos = k->outlen = 0; /* all sent: start over */
  if (!k->out || k->outlen + need > k->outcap) {
    size_t cap = k->outcap ? k->outcap : 256;
    char *o;
    while (cap < k->outlen + need) cap *= 2;
    if (!(o = realloc(k->out, cap))) return -1;
    k->out = o;
    k->outcap = cap;
  }
  p = k->out + k->outlen;
  *p++ = '*';
  p = put_count(p, (size_t)argc);
  *p++ = '\r';
  *p++ = '\n';
  for (i = 0; i < argc; i++) {
    *p++ = '$';
    p = put_count(p, len[i]);
    *p++ = '\r';
    *p++ = '\n';
    if (len[i]) memcpy(p, argv[i], len[i]);
    p += len[i];
    *p++ = '\r';
    *p++ = '\n';
  }
  k->outlen = (size_t)(p - k->out);
  return 0;
}

/* c's entry at the tail of k's FIFO (c NULL: a ghost's, fl_link_push_ghost).
   The ring's growth stays in this function, not in a helper of it: the
   allocation-failure spec fails "the 2nd malloc in fl_link_push" */
int fl_link_push(fl_link *k, fl_req *c) {
  fl_entry *e;
  if (k->qlen == k->qcap) {
    int cap = k->qcap ? 2 * k->qcap : 8, i;
    fl_entry *q = malloc((size_t)cap * sizeof *q);
    if (!q) return -1;
    for (i = 0; i < k->qlen; i++) q[i] = k->q[(k->qhead + i) % k->qcap];
    free(k->q);
    k->q = q;
    k->qcap = cap;
    k->qhead = 0;
  }
  if (k->qlen == 0) k->progress = fl_now();
  e = &k->q[(k->qhead + k->qlen) % k->qcap];
  e->c = c;
  e->ghost = c == NULL;
  e->h = c ? c->h : 0;
  k->keys[e->h & 63]++;
  k->qlen++;
  return 0;
}

/* the reply of a command sent for no caller (conn.c orphan_release) is
   dropped when it comes; h: its key's hash, as a request's */
int fl_link_push_ghost(fl_link *k, unsigned h) {
  fl_entry *e;
  if (fl_link_push(k, NULL) != 0) return -1;
  e = &k->q[(k->qhead + k->qlen - 1) % k->qcap];
  k->keys[e->h & 63]--;
  e->h = h;
  k->keys[h & 63]++;
  return 0;
}

static void pop(fl_link *k) {
  unsigned *n = &k->keys[k->q[k->qhead].h & 63];
  if (*n) --*n;
  k->qhead = (k->qhead + 1) % k->qcap;
  k->qlen--;
}

/* out of memory for the handshake: a link without its AUTH or SELECT
   must not be used (its commands would run in the wrong database) */
static int connect_oom(fl_link *k) {
  k->state = FL_LK_CLOSED;
  k->handshake = 0;
  release_io(k);
  return -2;
}

/* start connecting k: the handshake (AUTH, SELECT) goes first.  0, or -1
   (cannot connect), -2 (out of memory) with k closed */
int fl_link_connect(fl_link *k, double now) {
  const fl_opts *o = &k->pool->o;
  release_io(k);
  k->rd = redisReaderCreate();
  if (!k->rd) return connect_oom(k);
  fl_reader_cap(k->rd);
  k->net = fl_net_open(o, now + o->connect_timeout);
  if (!k->net) {
    release_io(k);
    return -1;
  }
  k->state = FL_LK_CONNECTING;
  k->events = POLLOUT;
  k->gen = k->pool->gen;
  k->handshake = k->doomed = 0;
  k->reader = NULL;
  k->progress = now;
  if (o->password) {
    const char *argv[3];
    size_t len[3];
    int n = 0;
    argv[n] = "AUTH";
    len[n++] = 4;
    if (o->username) { /* ACL user */
      argv[n] = o->username;
      len[n++] = strlen(o->username);
    }
    argv[n] = o->password;
    len[n++] = strlen(o->password);
    if (fl_link_out(k, n, argv, len) != 0) return connect_oom(k);
    k->handshake++;
  }
  if (o->db) {
    char db[24];
    const char *argv[2];
    size_t len[2];
    argv[0] = "SELECT";
    argv[1] = db;
    len[0] = 6;
    len[1] = (size_t)snprintf(db, sizeof db, "%d", o->db);
    if (fl_link_out(k, 2, argv, len) != 0) return connect_oom(k);
    k->handshake++;
  }
  return 0;
}

/* the requests waiting on the connect get their command time from now */
static void connected(fl_link *k) {
  fl_pool *p = k->pool;
  double now = fl_now();
  int i;
  k->state = FL_LK_READY;
  if (k->on_ready) { /* the subscription: channels again, no reconnect count */
    k->on_ready(k);
    return;
  }
  if (k->ever) p->n.reconnects++; /* connected again (stats.c) */
  k->ever = 1;
  k->progress = now;
  for (i = 0; i < k->qlen; i++) {
    fl_req *c = k->q[(k->qhead + i) % k->qcap].c;
    if (c && c->connwait) {
      c->connwait = 0;
      c->deadline = now + p->o.timeout + c->extra;
    }
  }
}

static void connect_failed(fl_link *k) {
  const char *e = fl_net_error(k->net);
  if (!e || !*e) e = "timed out";
  else if (strncmp(e, "connect: ", 9) == 0) e += 9;
  close_code(k, "connect", e, fl_net_tls_failed(k->net) ? FL_E_TLS : FL_E_CONNECT);
}

/* a handshake reply: an error fails the link ("auth ...", "select ...") */
static int on_handshake(fl_link *k, redisReply *r) {
  const fl_opts *o = &k->pool->o;
  int is_auth = o->password && k->handshake == 1 + (o->db != 0);
  k->handshake--;
  if (r->type == REDIS_REPLY_ERROR) {
    char msg[FL_ERRLEN / 2];
    if (is_auth) snprintf(msg, sizeof msg, "%s", r->str ? r->str : "error");
    else snprintf(msg, sizeof msg, "db %d: %s", o->db, r->str ? r->str : "error");
    freeReplyObject(r);
    close_as(k, is_auth ? "auth" : "select", msg);
    return -1;
  }
  freeReplyObject(r);
  return 0;
}

/* one reply: to the handshake, a ghost, or the head request */
static int dispatch(fl_link *k, redisReply *r, void *self) {
  fl_entry *e;
  fl_req *c;
  int st;
  if (k->handshake > 0) return on_handshake(k, r);
  if (k->on_message) { /* a subscription: no FIFO */
    k->on_message(k, r);
    return 0;
  }
  if (k->qlen == 0) { /* nobody asked: not Redis, or out of step */
    freeReplyObject(r);
    close_as(k, NULL, "unexpected reply");
    return -1;
  }
  k->progress = fl_now();
  e = &k->q[k->qhead];
  if (!(c = e->c)) { /* its request gave up: dropped */
    freeReplyObject(r);
    if (--e->ghost <= 0) pop(k);
    return 0;
  }
  st = fl_req_on_reply(c, r);
  if (st == FL_WAIT) return 0;
  if (st == FL_LATE) { /* NOSCRIPT: the EVAL is queued; its WAIT's reply still comes here */
    if (c->post) {
      e->c = NULL;
      e->ghost = 1;
    } else {
      pop(k);
    }
    if (fl_link_push(k, c) == 0) return 0;
    st = FL_ERR;
  } else if (st != FL_ERR) {
    pop(k);
  }
  if (st == FL_ERR) {
    /* out of memory in the middle of c's retry: what it queued (part of
       it, perhaps) and what it still expects (a WAIT's reply) would answer
       the requests behind it, another's "obtained" among them.  The link
       cannot be trusted: closed, as fl_req_begin does; c fails first */
    fl_req_fail(c, c->op, "out of memory");
    if (c->wkey != self) fl_wake(k->pool, c->wkey);
    close_as(k, NULL, "out of memory");
    return -1;
  }
  c->state = FL_RQ_DONE;
  if (c->wkey != self) fl_wake(k->pool, c->wkey);
  return 0;
}

/* send what is queued; -1 when the link failed */
static int flush(fl_link *k, int *sent) {
  while (k->outpos < k->outlen) {
    long n = fl_net_send(k->net, k->out + k->outpos, k->outlen - k->outpos);
    if (n < 0) {
      const char *e = fl_net_error(k->net);
      close_as(k, NULL, e && *e ? e : "send failed");
      return -1;
    }
    if (n == 0) return 0; /* would block: the caller waits for POLLOUT */
    k->outpos += (size_t)n;
    *sent = 1;
  }
  k->outpos = k->outlen = 0;
  return 0;
}

/* send what is queued, if the link is up (never reads, never waits) */
void fl_link_send(fl_link *k) {
  int sent = 0;
  if (k->state == FL_LK_READY) flush(k, &sent);
}

/* read and dispatch until the transport would block; with 'block' (a
   plain script's wait) the first receive waits, unless a reply came first.
   Returns 1 when nothing came at all (the receive would block) */
static int read_all(fl_link *k, void *self, int block) {
  char buf[16384];
  int drained = 0, got = 0;
  for (;;) {
    void *r = NULL;
    long n;
    if (redisReaderGetReply(k->rd, &r) != REDIS_OK) {
      char msg[FL_ERRLEN / 2];
      /* 0.14 reports a refused array (fl_reader_cap) as "Out of memory" */
      snprintf(msg, sizeof msg, "protocol error: %s",
               strcmp(k->rd->errstr, "Out of memory") == 0
                   ? "reply too large (or out of memory)" : k->rd->errstr);
      close_as(k, NULL, msg);
      return 0;
    }
    if (r) {
      if (dispatch(k, r, self) != 0) return 0;
      block = 0; /* something to answer: no waiting now */
      got = 1;
      continue;
    }
    if (drained) return 0;
    n = block ? fl_net_recv_block(k->net, buf, sizeof buf)
              : fl_net_recv(k->net, buf, sizeof buf);
    if (n == 0) return !got; /* would block */
    if (n < 0) {
      const char *e = fl_net_error(k->net);
      close_as(k, NULL, e && *e ? e : "Server closed the connection");
      return 0;
    }
    block = 0;
    got = 1;
    if (redisReaderFeed(k->rd, buf, (size_t)n) != REDIS_OK) {
      close_as(k, NULL, "out of memory");
      return 0;
    }
    /* a short read drained the socket: parse what came, and leave the next
       recv to the next readiness (saves an EAGAIN per request) */
    if ((size_t)n < sizeof buf && fl_net_pending(k->net) <= 0) drained = 1;
  }
}

/* after reading: a NOSCRIPT retry queued by a reply goes out; k->events */
static void after_read(fl_link *k) {
  int sent = 0;
  if (k->state != FL_LK_READY) return;
  if (k->outlen > 0 && flush(k, &sent) != 0) return;
  k->events = k->outpos < k->outlen ? POLLOUT : fl_net_events(k->net);
}

/* move k on as far as it goes without waiting; k->events: what it waits for */
void fl_link_drive(fl_link *k, void *self) {
  int sent = 0;
  if (k->state == FL_LK_CONNECTING) {
    int st = fl_net_step(k->net);
    if (st == FL_ERR) {
      connect_failed(k);
      return;
    }
    if (st != FL_DONE) {
      k->events = fl_net_events(k->net);
      return;
    }
    connected(k);
  }
  if (k->state != FL_LK_READY) return;
  if (flush(k, &sent) != 0) return;
  if (k->outpos < k->outlen) {
    k->events = POLLOUT;
    return;
  }
  /* just written, nothing buffered: the answer cannot be there yet */
  if (!sent || fl_net_pending(k->net) > 0) read_all(k, self, 0);
  after_read(k);
}

/*
 * A plain script's wait for its reply on k (drive.c, without a host): the
 * receive itself waits, up to the transport's receive timeout, when 'left'
 * leaves room for all of it (with 10 ms for the kernel's timer ticks).
 * 1: waited (bytes came and were dispatched, or the link failed); 0: the
 * caller waits with poll(2), nothing was read.
 */
int fl_link_wait(fl_link *k, void *self, double left) {
  double b;
  if (k->state != FL_LK_READY || k->outpos < k->outlen || k->events != POLLIN ||
      fl_net_pending(k->net) > 0)
    return 0;
  b = fl_net_block(k->net);
  if (b <= 0 || left < b + 0.01) return 0;
  if (read_all(k, self, 1)) return 0;
  after_read(k);
  return 1;
}

/*
 * The descriptor a host waits on for k (drive.c, wake.c): an epoll
 * descriptor of the link's own that watches its socket (or its resolver's
 * eventfd) for 'events', kept for the link's life.  It is readable when
 * the socket is ready, and also when the socket failed (EPOLLERR, EPOLLHUP
 * are always reported), but never is in an error state itself: a server's
 * reset then reaches the core's own receive, where the request fails with
 * it, and never the host's poll (libuv reports POLLERR as UV_EBADF, which
 * luv prints to stderr before any Lua code runs).  -1 when there is none
 * (no descriptor left for it): the caller waits on the socket itself.
 */
int fl_link_hostfd(fl_link *k, int events) {
  struct epoll_event ev;
  int fd = k->net ? fl_net_fd(k->net) : -1, op;
  if (fd < 0) return -1;
  if (!k->eopen) {
    if ((k->efd = epoll_create1(EPOLL_CLOEXEC)) < 0) return -1;
    k->eopen = 1;
    k->esock = -1;
  }
  if (k->esock == fd && k->eevents == events) return k->efd;
  if (k->esock != fd) unwatch(k);
  memset(&ev, 0, sizeof ev);
  ev.events = (events & POLLOUT ? (unsigned)EPOLLOUT : 0u) | (events & POLLIN ? (unsigned)EPOLLIN : 0u);
  ev.data.fd = fd;
  op = k->esock == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  /* a MOD of a registration its closing dropped (the number reused): ADD */
  if (epoll_ctl(k->efd, op, fd, &ev) != 0 &&
      (op == EPOLL_CTL_ADD || epoll_ctl(k->efd, EPOLL_CTL_ADD, fd, &ev) != 0)) {
    k->esock = -1;
    return -1;
  }
  k->esock = fd;
  k->eevents = events;
  return k->efd;
}

/* is an idle link still usable?  A server that went away leaves the
   socket readable (EOF) while we owe it nothing: reconnect before writing,
   instead of failing the call that happens to come first. */
static int stale(fl_link *k) {
  struct pollfd pfd;
  if (k->state != FL_LK_READY) return 0;
  if (fl_net_pending(k->net) > 0) return 1;
  pfd.fd = fl_net_fd(k->net);
  pfd.events = POLLIN;
  pfd.revents = 0;
  return poll(&pfd, 1, 0) != 0;
}

static fl_link *new_link(fl_pool *p) {
  fl_link *k;
  if (p->nlinks == p->linkcap) {
    int cap = p->linkcap ? 2 * p->linkcap : 2;
    fl_link **a = realloc(p->links, (size_t)cap * sizeof *a);
    if (!a) return NULL;
    p->links = a;
    p->linkcap = cap;
  }
  if (!(k = calloc(1, sizeof *k))) return NULL;
  k->pool = p;
  p->links[p->nlinks++] = k;
  return k;
}

/*
 * The link for a new request: an idle open one; else a new one while the
 * pool has fewer than max_connections; else the one with the shortest
 * FIFO.  A link to where the pool pointed before a retarget, or one the
 * server is about to close, takes no new request.
 */
fl_link *fl_link_for(fl_pool *p, unsigned h) {
  fl_link *best = NULL, *closed = NULL;
  int i, live = 0;
  /* a link that may still carry a command of the same key takes this one
     too, behind it: Redis serves its clients in turns, so a command written
     later on an idle connection can run before one written earlier behind
     a long pipeline on another (a release could overtake the obtain a
     Redlock majority made unnecessary, leaving that node's key until its
     ttl).  One key's commands reach the server in the order they were made */
  for (i = 0; i < p->nlinks; i++) {
    fl_link *k = p->links[i];
    if (k->state != FL_LK_CLOSED && k->gen == p->gen && !k->doomed && k->keys[h & 63])
      return k;
  }
  for (i = 0; i < p->nlinks; i++) {
    fl_link *k = p->links[i];
    if (k->state != FL_LK_CLOSED && (k->gen != p->gen || k->doomed)) {
      if (!fl_link_idle(k)) continue;
      fl_link_close(k, "closed");
    }
    if (k->state != FL_LK_CLOSED && fl_link_idle(k) && stale(k)) {
      fl_link_close(k, "closed");
    }
    if (k->state == FL_LK_CLOSED) {
      if (!closed && !k->net) closed = k; /* not one a reader still watches */
      continue;
    }
    live++;
    if (fl_link_idle(k)) return k;
    if (!best || k->qlen < best->qlen) best = k;
  }
  if (live < p->maxconn || !best) return closed ? closed : new_link(p);
  return best;
}
