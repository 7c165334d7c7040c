/*
 * The transport behind net.h: plain TCP and Unix sockets, non-blocking,
 * and the dispatch to the layer a connection uses (TCP, or TLS over it:
 * net_tls.c).  Numeric addresses connect at once; a host name is resolved
 * on a thread (net_resolve.c) while the caller waits on its fd.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "net_int.h"

static int tcp_pending(const fl_net *n) { (void)n; return 0; }
static void tcp_close(fl_net *n) { (void)n; }

static const fl_net_funcs tcp_funcs = {fl_tcp_step, fl_tcp_send, fl_tcp_recv,
                                       tcp_pending, tcp_close};

static void fail(fl_net *n, const char *why) {
  if (!n->err[0]) snprintf(n->err, sizeof n->err, "%s", why);
}

static int unix_start(fl_net *n, const char *path) {
  struct sockaddr_un sa;
  if (strlen(path) >= sizeof sa.sun_path) {
    fail(n, "socket path too long");
    return -1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if ((n->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
      (connect(n->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS &&
       errno != EAGAIN)) {
    fail(n, strerror(errno));
    return -1;
  }
  return 0;
}

/* connect to the next address that takes a connect: a name may give ::1
   before 127.0.0.1 (localhost), and a server listen on one of them only */
static int addr_start(fl_net *n) {
  int e = 0;
  n->events = POLLOUT;
  while (n->next) {
    struct addrinfo *a = n->next;
    n->next = a->ai_next;
    if (n->fd >= 0) close(n->fd);
    n->fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (n->fd >= 0 && (connect(n->fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS))
      return 0;
    e = errno;
  }
  fail(n, strerror(e ? e : ECONNREFUSED));
  return -1;
}

/* a numeric address connects now; a name goes to the resolver thread */
static int tcp_start(fl_net *n) {
  struct addrinfo hints, *ai = NULL;
  char port[16];
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST; /* never blocks: no lookup */
  snprintf(port, sizeof port, "%d", n->port);
  if (getaddrinfo(n->host, port, &hints, &ai) == 0 && ai) {
    n->ai = n->next = ai;
    return addr_start(n);
  }
  if (!(n->rq = fl_resolve_start(n->host, n->port))) {
    fail(n, "cannot start the name resolver");
    return -1;
  }
  n->events = POLLIN; /* on the resolver's fd */
  return 0;
}

fl_net *fl_net_open(const fl_opts *o, double deadline) {
  fl_net *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->fd = -1;
  n->deadline = deadline;
  n->events = POLLOUT;
  n->port = o->port;
  n->f = o->tls ? &fl_tls_funcs : &tcp_funcs;
  /* half the request timeout: a wait that has less left polls instead */
  n->block = o->tls ? 0 : o->timeout / 2;
  n->tls = fl_tls_ref(o->tls);
  if (o->host && !(n->host = malloc(strlen(o->host) + 1))) {
    fl_net_close(n);
    return NULL;
  }
  if (n->host) memcpy(n->host, o->host, strlen(o->host) + 1);
  if (o->path) unix_start(n, o->path);
  else tcp_start(n);
  return n;
}

/*
 * A plain socket, once connected, is a blocking one with a receive timeout
 * (n->block): a plain script then waits for a reply in its recv(2), one
 * system call instead of a poll(2) and a recv(2), as a blocking client
 * does.  Every other send and receive passes MSG_DONTWAIT, so nothing else
 * can block; an event loop in the process that sets O_NONBLOCK again (libuv
 * does) is noticed by fl_net_recv_block.  TLS keeps its socket non-blocking.
 */
static int blocking(fl_net *n) {
  struct timeval tv;
  int fl;
  tv.tv_sec = (time_t)n->block;
  tv.tv_usec = (suseconds_t)((n->block - (double)tv.tv_sec) * 1e6);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) return -1; /* 0 would be: no timeout */
  if (setsockopt(n->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) return -1;
  if ((fl = fcntl(n->fd, F_GETFL)) < 0 || fcntl(n->fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return -1;
  return 0;
}

/* the resolver answered (or not yet) */
static int step_resolve(fl_net *n) {
  struct addrinfo *ai;
  const char *why;
  if (!fl_resolve_take(n->rq, &ai, &why)) {
    if (fl_now() <= n->deadline) return FL_WAIT;
    snprintf(n->err, sizeof n->err, "timed out resolving '%s'", n->host);
    return FL_ERR;
  }
  fl_resolve_drop(n->rq);
  n->rq = NULL;
  if (!ai) {
    snprintf(n->err, sizeof n->err, "cannot resolve '%s': %s", n->host, why);
    return FL_ERR;
  }
  n->ai = n->next = ai;
  return addr_start(n) == 0 ? FL_WAIT : FL_ERR;
}

int fl_tcp_step(fl_net *n) {
  struct pollfd pf;
  int e = 0;
  socklen_t len = sizeof e;
  if (n->err[0]) return FL_ERR;
  if (n->connected) return FL_DONE;
  if (n->rq && step_resolve(n) != FL_WAIT) return FL_ERR;
  if (n->rq) return FL_WAIT;
  if (n->fd < 0) return FL_ERR;
  pf.fd = n->fd;
  pf.events = POLLOUT;
  if (poll(&pf, 1, 0) <= 0) return fl_now() > n->deadline ? FL_ERR : FL_WAIT;
  getsockopt(n->fd, SOL_SOCKET, SO_ERROR, &e, &len);
  if (e && n->next) return addr_start(n) == 0 ? FL_WAIT : FL_ERR; /* the next address */
  if (e) {
    fail(n, strerror(e));
    return FL_ERR;
  }
  n->connected = 1;
  n->events = POLLIN;
  if (n->block > 0 && blocking(n) != 0) n->block = 0;
  return FL_DONE;
}

int fl_net_step(fl_net *n) { return n->f->step(n); }
int fl_net_fd(const fl_net *n) { return n->rq ? fl_resolve_fd(n->rq) : n->fd; }
int fl_net_events(const fl_net *n) { return n->events; }
int fl_net_pending(const fl_net *n) { return n->f->pending(n); }
const char *fl_net_error(const fl_net *n) { return n->err; }
long fl_net_send(fl_net *n, const void *buf, size_t len) { return n->f->send(n, buf, len); }
long fl_net_recv(fl_net *n, void *buf, size_t len) { return n->f->recv(n, buf, len); }

long fl_tcp_send(fl_net *n, const void *buf, size_t len) {
  ssize_t k;
  do k = send(n->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT); /* no SIGPIPE on a reset */
  while (k < 0 && errno == EINTR);
  if (k >= 0) return (long)k;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    n->events = POLLOUT;
    return 0;
  }
  fail(n, strerror(errno));
  return -1;
}

long fl_tcp_recv(fl_net *n, void *buf, size_t len) {
  ssize_t k;
  do k = recv(n->fd, buf, len, MSG_DONTWAIT);
  while (k < 0 && errno == EINTR);
  if (k > 0) return (long)k;
  if (k == 0) {
    fail(n, "Server closed the connection");
    return -1;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    n->events = POLLIN;
    return 0;
  }
  fail(n, strerror(errno));
  return -1;
}

double fl_net_block(const fl_net *n) { return n->connected ? n->block : 0; }

long fl_net_recv_block(fl_net *n, void *buf, size_t len) {
  ssize_t k;
  double t0;
  if (fl_net_block(n) <= 0) return fl_net_recv(n, buf, len);
  t0 = fl_now();
  k = recv(n->fd, buf, len, 0);
  if (k > 0) return (long)k;
  if (k == 0) {
    fail(n, "Server closed the connection");
    return -1;
  }
  if (errno == EINTR) return 0;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    /* back long before the timeout: the socket is non-blocking again */
    if (fl_now() - t0 < n->block / 2) n->block = 0;
    n->events = POLLIN;
    return 0;
  }
  fail(n, strerror(errno));
  return -1;
}

void fl_net_close(fl_net *n) {
  if (!n) return;
  if (n->f) n->f->close(n);
  fl_resolve_drop(n->rq);
  if (n->ai) freeaddrinfo(n->ai);
  if (n->fd >= 0) close(n->fd);
  fl_tls_unref(n->tls);
  free(n->host);
  free(n);
}
