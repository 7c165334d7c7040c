/*
 * TLS behind net.h, on OpenSSL: the TCP connect (net_tcp.c), then a
 * non-blocking handshake on the same socket and the same deadline.
 *
 * - Our own BIO sends with MSG_NOSIGNAL: OpenSSL's socket BIO uses write(2),
 *   and a write to a socket the server reset raises SIGPIPE, which would
 *   kill the program.
 * - SSL_read may need a write and SSL_write a read (WANT_READ/WANT_WRITE
 *   either way): n->events says which the next wait is for.
 * - Verification is on unless verify = "none": the chain against the CA
 *   file/dir or the system store, and with "full" the host name (or IP
 *   address) checked by OpenSSL against the certificate.  SNI is sent for
 *   names, never for IP literals (RFC 6066).
 * - Nothing here prints key material or a password: errors name reasons.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "net_int.h"

struct fl_tls {
  int refs;          /* atomic: the renewal thread holds copies */
  SSL_CTX *ctx;
  char *server_name; /* NULL: the host, unless it is an IP literal */
  int verify;
};

/* ---- the BIO ------------------------------------------------------------- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *buf, int len) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  ssize_t k;
  BIO_clear_retry_flags(b);
  do k = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
  while (k < 0 && errno == EINTR);
  if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return (int)k;
}

static int bio_read(BIO *b, char *buf, int len) {
  int fd = (int)(intptr_t)BIO_get_data(b);
  ssize_t k;
  BIO_clear_retry_flags(b);
  do k = recv(fd, buf, (size_t)len, 0);
  while (k < 0 && errno == EINTR);
  if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return (int)k;
}

static int bio_puts(BIO *b, const char *s) { return bio_write(b, s, (int)strlen(s)); }

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b, (void)num, (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* nothing is buffered here */
}

static int bio_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

/* made once per load of this library, on first use */
static void bio_setup(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "fluxalock");
  if (!m) return;
  BIO_meth_set_write(m, bio_write);
  BIO_meth_set_read(m, bio_read);
  BIO_meth_set_puts(m, bio_puts);
  BIO_meth_set_ctrl(m, bio_ctrl);
  BIO_meth_set_create(m, bio_create);
  bio_method = m;
}

/* lua_close unloads this library (dlclose): its method goes with it, or
   the pointer, and with it the allocation, would be lost */
static void bio_unload(void) __attribute__((destructor));
static void bio_unload(void) {
  BIO_meth_free(bio_method);
  bio_method = NULL;
}

/* ---- settings ------------------------------------------------------------ */

/* the reason of OpenSSL's latest error, or dflt; the queue is emptied */
static const char *reason(const char *dflt) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : dflt;
}

static int load(fl_tls *t, const fl_tls_conf *cf, const char **bad) {
  SSL_CTX *c = t->ctx;
  if (cf->ca_file || cf->ca_path) {
    *bad = cf->ca_file ? "ca_file" : "ca_path";
    if (SSL_CTX_load_verify_locations(c, cf->ca_file, cf->ca_path) != 1) return -1;
  } else if (cf->verify != FL_VERIFY_NONE && SSL_CTX_set_default_verify_paths(c) != 1) {
    *bad = "ca_file";
    return -1;
  }
  if (cf->cert_file) {
    *bad = "cert_file";
    if (SSL_CTX_use_certificate_chain_file(c, cf->cert_file) != 1) return -1;
    *bad = "key_file";
    if (SSL_CTX_use_PrivateKey_file(c, cf->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(c) != 1)
      return -1;
  }
  return 0;
}

void fl_tls_library_init(void) { OPENSSL_init_ssl(0, NULL); }

fl_tls *fl_tls_new(const fl_tls_conf *cf, char *err, size_t errlen, const char **bad) {
  fl_tls *t = calloc(1, sizeof *t);
  *bad = "tls";
  if (!t || !(t->ctx = SSL_CTX_new(TLS_client_method()))) {
    snprintf(err, errlen, "cannot be set up: %s", reason("out of memory"));
    free(t);
    return NULL;
  }
  t->refs = 1;
  t->verify = cf->verify;
  SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
  /* a partial write is a short send; conn.c may grow its buffer meanwhile */
  SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(t->ctx, cf->verify == FL_VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                     NULL);
  if (load(t, cf, bad) != 0) {
    snprintf(err, errlen, "cannot be loaded: %s", reason("unknown error"));
    fl_tls_unref(t);
    return NULL;
  }
  if (cf->server_name && !(t->server_name = malloc(strlen(cf->server_name) + 1))) {
    snprintf(err, errlen, "cannot be set up: out of memory");
    fl_tls_unref(t);
    return NULL;
  }
  if (t->server_name) memcpy(t->server_name, cf->server_name, strlen(cf->server_name) + 1);
  return t;
}

fl_tls *fl_tls_ref(fl_tls *t) {
  if (t) __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
  return t;
}

void fl_tls_unref(fl_tls *t) {
  if (!t || __atomic_add_fetch(&t->refs, -1, __ATOMIC_ACQ_REL) > 0) return;
  SSL_CTX_free(t->ctx);
  free(t->server_name);
  free(t);
}

/* ---- a connection -------------------------------------------------------- */

static int is_ip(const char *s) {
  unsigned char a[16];
  return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* the TCP connect is done: an SSL on the socket, names set for the check */
static int attach(fl_net *n) {
  const char *name = n->tls->server_name ? n->tls->server_name : n->host;
  SSL *s;
  BIO *b;
  pthread_once(&bio_once, bio_setup);
  if (!bio_method || !(s = SSL_new(n->tls->ctx))) return -1;
  n->ssl = s;
  if (!(b = BIO_new(bio_method))) return -1;
  BIO_set_data(b, (void *)(intptr_t)n->fd);
  SSL_set_bio(s, b, b);
  if (name && !is_ip(name) && SSL_set_tlsext_host_name(s, name) != 1) return -1;
  if (name && n->tls->verify == FL_VERIFY_FULL) {
    if (is_ip(name) ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), name) != 1
                    : SSL_set1_host(s, name) != 1)
      return -1;
    SSL_set_hostflags(s, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  }
  SSL_set_connect_state(s);
  return 0;
}

/* did not look like TLS at all: a plain server, or something else */
static int not_tls(int r) {
  return r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_PACKET_LENGTH_TOO_LONG ||
         r == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
         r == SSL_R_UNEXPECTED_MESSAGE || r == SSL_R_HTTP_REQUEST ||
         r == SSL_R_LENGTH_MISMATCH || r == SSL_R_WRONG_SSL_VERSION;
}

/* why the handshake failed, in n->err */
static void explain(fl_net *n, int sslerr) {
  SSL *s = n->ssl;
  long v = SSL_get_verify_result(s);
  unsigned long e = ERR_peek_last_error();
  int r = e ? ERR_GET_REASON(e) : 0;
  if (r == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK) {
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
      snprintf(n->err, sizeof n->err, "hostname mismatch: the certificate is not for '%s'",
               n->tls->server_name ? n->tls->server_name : n->host ? n->host : "?");
    else
      snprintf(n->err, sizeof n->err, "certificate verify failed: %s",
               X509_verify_cert_error_string(v));
  } else if (not_tls(r) || (!e && (sslerr == SSL_ERROR_ZERO_RETURN ||
                                   (sslerr == SSL_ERROR_SYSCALL && errno == 0)))) {
    snprintf(n->err, sizeof n->err, "server did not answer TLS");
  } else if (e) {
    snprintf(n->err, sizeof n->err, "TLS handshake failed: %s", reason("error"));
  } else {
    snprintf(n->err, sizeof n->err, "TLS handshake failed: %s", strerror(errno ? errno : EIO));
  }
  ERR_clear_error();
}

/* WANT_READ/WANT_WRITE: 0 with n->events set; anything else -1 */
static int wants(fl_net *n, int e) {
  if (e == SSL_ERROR_WANT_READ) n->events = POLLIN;
  else if (e == SSL_ERROR_WANT_WRITE) n->events = POLLOUT;
  else return -1;
  return 0;
}

static int tls_step(fl_net *n) {
  int st, r;
  if (n->secure) return FL_DONE;
  if ((st = fl_tcp_step(n)) != FL_DONE) return st;
  if (!n->tls->server_name && !n->host && n->tls->verify == FL_VERIFY_FULL) {
    /* a Unix socket has no host name: "full" would check the chain only */
    snprintf(n->err, sizeof n->err, "hostname mismatch: no name to check (set tls.server_name)");
    return FL_ERR;
  }
  if (!n->ssl && attach(n) != 0) {
    snprintf(n->err, sizeof n->err, "TLS setup failed: %s", reason("out of memory"));
    return FL_ERR;
  }
  ERR_clear_error();
  errno = 0;
  r = SSL_connect(n->ssl);
  if (r == 1) {
    n->secure = 1;
    n->events = POLLIN;
    return FL_DONE;
  }
  st = SSL_get_error(n->ssl, r);
  if (wants(n, st) == 0) return fl_now() > n->deadline ? FL_ERR : FL_WAIT;
  explain(n, st);
  return FL_ERR;
}

/* after a failed read or write: 0 to wait, or -1 with n->err set */
static long io_error(fl_net *n, int r) {
  int e = SSL_get_error(n->ssl, r);
  /* close_notify, or a plain EOF without it: the same lost connection */
  int eof = e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && !errno) ||
            ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
  if (wants(n, e) == 0) return 0;
  if (eof) snprintf(n->err, sizeof n->err, "Server closed the connection");
  else if (e == SSL_ERROR_SYSCALL) snprintf(n->err, sizeof n->err, "%s", strerror(errno));
  else snprintf(n->err, sizeof n->err, "TLS: %s", reason("error"));
  ERR_clear_error();
  return -1;
}

static long tls_send(fl_net *n, const void *buf, size_t len) {
  int r;
  if (len == 0) return 0;
  ERR_clear_error();
  errno = 0;
  r = SSL_write(n->ssl, buf, len > 1 << 30 ? 1 << 30 : (int)len);
  return r > 0 ? (long)r : io_error(n, r);
}

static long tls_recv(fl_net *n, void *buf, size_t len) {
  int r;
  ERR_clear_error();
  errno = 0;
  r = SSL_read(n->ssl, buf, len > 1 << 30 ? 1 << 30 : (int)len);
  if (r > 0) {
    n->events = POLLIN;
    return r;
  }
  return io_error(n, r);
}

static int tls_pending(const fl_net *n) { return n->ssl ? SSL_pending(n->ssl) : 0; }

/* no close_notify: the socket closes right after, and a reply to it is
   never awaited (idle closes on either side are plain lost connections) */
static void tls_close(fl_net *n) {
  if (n->ssl) SSL_free(n->ssl);
  n->ssl = NULL;
}

const fl_net_funcs fl_tls_funcs = {tls_step, tls_send, tls_recv, tls_pending, tls_close};

/* the TCP connect was made and TLS failed on it (the handshake, or the
   certificate's verification): a "tls" failure, not a "connect" one */
int fl_net_tls_failed(const fl_net *n) {
  return n && n->tls && n->connected && !n->secure;
}
