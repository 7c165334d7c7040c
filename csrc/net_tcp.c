/*
 * Plain TCP and Unix-socket transport behind net.h, non-blocking.
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
#include <sys/un.h>
#include <unistd.h>

#include "net.h"

struct fl_net {
  int fd, connected, events;
  double deadline;
  char err[128];
};

static void fail(fl_net *n, const char *what, int e) {
  snprintf(n->err, sizeof n->err, "%s: %s", what, strerror(e));
}

static int start(fl_net *n, const fl_opts *o) {
  struct addrinfo hints, *ai = NULL;
  char port[16];
  int r;
  if (o->path) {
    struct sockaddr_un sa;
    if (strlen(o->path) >= sizeof sa.sun_path) return -1;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, o->path, strlen(o->path) + 1);
    if ((n->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) return -1;
    return connect(n->fd, (struct sockaddr *)&sa, sizeof sa) == 0 || errno == EINPROGRESS ||
                   errno == EAGAIN ? 0 : -1;
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof port, "%d", o->port);
  if (getaddrinfo(o->host, port, &hints, &ai) != 0 || !ai) return -1;
  n->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  r = n->fd < 0 ? -1 : connect(n->fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS ? 0 : -1;
  freeaddrinfo(ai);
  return r;
}

fl_net *fl_net_open(const fl_opts *o, double deadline) {
  fl_net *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->fd = -1;
  n->deadline = deadline;
  n->events = POLLOUT;
  if (start(n, o) != 0) fail(n, "connect", errno);
  return n;
}

int fl_net_step(fl_net *n) {
  struct pollfd pf;
  int e = 0;
  socklen_t len = sizeof e;
  if (n->err[0] || n->fd < 0) return FL_ERR;
  if (n->connected) return FL_DONE;
  pf.fd = n->fd;
  pf.events = POLLOUT;
  if (poll(&pf, 1, 0) <= 0) return fl_now() > n->deadline ? FL_ERR : FL_WAIT;
  getsockopt(n->fd, SOL_SOCKET, SO_ERROR, &e, &len);
  if (e) {
    fail(n, "connect", e);
    return FL_ERR;
  }
  n->connected = 1;
  n->events = POLLIN;
  return FL_DONE;
}

int fl_net_fd(const fl_net *n) { return n->fd; }
int fl_net_events(const fl_net *n) { return n->events; }
int fl_net_pending(const fl_net *n) { (void)n; return 0; }
const char *fl_net_error(const fl_net *n) { return n->err; }

long fl_net_send(fl_net *n, const void *buf, size_t len) {
  ssize_t k = send(n->fd, buf, len, MSG_NOSIGNAL);
  if (k >= 0) return (long)k;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
}

long fl_net_recv(fl_net *n, void *buf, size_t len) {
  ssize_t k = recv(n->fd, buf, len, 0);
  if (k > 0) return (long)k;
  if (k == 0) return -1;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
}

void fl_net_close(fl_net *n) {
  if (!n) return;
  if (n->fd >= 0) close(n->fd);
  free(n);
}
