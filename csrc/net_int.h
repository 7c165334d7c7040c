/*
 * net_int.h: what the transport's files share (not for callers: net.h).
 * A connection is a table of functions (TCP or TLS) over one socket; TLS
 * drives the TCP connect first, then its handshake, on the same fd.
 */
#ifndef FLUXALOCK_NET_INT_H
#define FLUXALOCK_NET_INT_H

#include "net.h"

struct addrinfo;
typedef struct fl_resolve fl_resolve;

typedef struct fl_net_funcs {
  int (*step)(fl_net *n);
  long (*send)(fl_net *n, const void *buf, size_t len);
  long (*recv)(fl_net *n, void *buf, size_t len);
  int (*pending)(const fl_net *n);
  void (*close)(fl_net *n); /* the layer's own state; the fd is closed after */
} fl_net_funcs;

struct fl_net {
  const fl_net_funcs *f;
  int fd;             /* the socket, -1 before it exists */
  int connected;      /* TCP connect confirmed */
  int events;         /* what the next wait is for */
  int port;
  double deadline;
  fl_resolve *rq;     /* a host name being resolved, or NULL */
  struct addrinfo *ai, *next; /* the addresses, and the next to try */
  char *host;         /* NULL for a Unix socket */
  fl_tls *tls;        /* one reference, or NULL for plain */
  void *ssl;          /* SSL *, once the TCP connect is done */
  int secure;         /* the TLS handshake is done */
  double block;       /* plain sockets: the receive timeout a blocking
                         receive waits at most (0: none, never blocks) */
  char err[256];
};

/* net_tcp.c: the plain layer (TLS calls it underneath) */
int fl_tcp_step(fl_net *n);
long fl_tcp_send(fl_net *n, const void *buf, size_t len);
long fl_tcp_recv(fl_net *n, void *buf, size_t len);
extern const fl_net_funcs fl_tls_funcs; /* net_tls.c */

/* net_resolve.c: getaddrinfo on a thread of its own, so that a slow name
   never blocks the caller; it polls fl_resolve_fd for POLLIN */
fl_resolve *fl_resolve_start(const char *host, int port);
int fl_resolve_fd(const fl_resolve *r);
/* 1 when done (*ai: the addresses, the caller frees; NULL: *why says
   why), 0 while running */
int fl_resolve_take(fl_resolve *r, struct addrinfo **ai, const char **why);
void fl_resolve_drop(fl_resolve *r); /* abandon or finish; the thread frees */

#endif
