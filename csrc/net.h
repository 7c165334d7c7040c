/*
 * net.h: the non-blocking transport: plain TCP, Unix sockets and TLS.
 * fl_net_open starts a connection; fl_net_step moves it on (FL_DONE once
 * usable, FL_WAIT: poll fl_net_fd for fl_net_events, FL_ERR); then
 * fl_net_send/fl_net_recv move bytes (>0, 0 would block, -1 error/EOF).
 * Re-read fl_net_fd after every step: while a host name resolves, it is the
 * resolver's descriptor.  fl_net_events may ask for POLLOUT on a read (TLS),
 * and fl_net_pending() > 0 means bytes wait inside the transport, which
 * poll cannot see: read them before waiting.  Every send and receive is
 * non-blocking (MSG_DONTWAIT) but fl_net_recv_block's.
 */
#ifndef FLUXALOCK_NET_H
#define FLUXALOCK_NET_H

#include <stddef.h>

#include "fluxalock.h"

typedef struct fl_net fl_net;

fl_net *fl_net_open(const fl_opts *o, double deadline);
int fl_net_step(fl_net *n);
int fl_net_fd(const fl_net *n);
int fl_net_events(const fl_net *n);
long fl_net_send(fl_net *n, const void *buf, size_t len);
long fl_net_recv(fl_net *n, void *buf, size_t len);
int fl_net_pending(const fl_net *n);
/* a plain script's wait for a reply (no host shares the process's loop):
   fl_net_block() is how long fl_net_recv_block may block at most, in
   seconds, or 0 when the transport cannot (TLS); fl_net_recv_block is
   fl_net_recv that waits for the first bytes (0: none came in that time,
   or a signal came; the caller waits with poll) */
double fl_net_block(const fl_net *n);
long fl_net_recv_block(fl_net *n, void *buf, size_t len);
const char *fl_net_error(const fl_net *n);
int fl_net_tls_failed(const fl_net *n); /* the TLS handshake failed, not TCP */
void fl_net_close(fl_net *n);

/* TLS settings of a pool: one SSL_CTX (CA, client certificate and key loaded
   once), shared by reference between the pool's options and every copy of
   them (the renewal thread's too; the count is atomic). */
typedef struct fl_tls fl_tls;
enum { FL_VERIFY_FULL = 0, FL_VERIFY_CA = 1, FL_VERIFY_NONE = 2 };

typedef struct fl_tls_conf {
  const char *ca_file, *ca_path, *cert_file, *key_file, *server_name;
  int verify; /* FL_VERIFY_* */
} fl_tls_conf;

/* NULL on failure: err says why, *bad names the option at fault */
fl_tls *fl_tls_new(const fl_tls_conf *cf, char *err, size_t errlen, const char **bad);
/* OpenSSL initialised now (its own exit handler registered now, if not
   already): an exit handler registered after this runs before OpenSSL's
   cleanup */
void fl_tls_library_init(void);
fl_tls *fl_tls_ref(fl_tls *t); /* NULL stays NULL */
void fl_tls_unref(fl_tls *t);

/* net_lua.c: core.tls{...} -> a TLS object; fl_totls: its settings, or NULL */
void fl_tls_open(lua_State *L); /* sets core.tls in the table at the top */
fl_tls *fl_totls(lua_State *L, int idx);

#endif
