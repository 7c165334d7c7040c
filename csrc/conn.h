/*
 * conn.h: what conn.c (requests, waiting) and conn_io.c (links: the
 * socket, its FIFO and its bytes) share; nothing else includes it.
 */
#ifndef FLUXALOCK_CONN_H
#define FLUXALOCK_CONN_H

#include "fluxalock.h"

/* conn_io.c */
fl_link *fl_link_for(fl_pool *p, unsigned h);
int fl_link_connect(fl_link *k, double now);
int fl_link_out(fl_link *k, int argc, const char *const *argv, const size_t *len);
int fl_link_push(fl_link *k, fl_req *c);
int fl_link_push_ghost(fl_link *k, unsigned h);
void fl_link_drive(fl_link *k, void *self);
void fl_link_reap(fl_link *k);

/* conn.c */
void fl_wake(fl_pool *p, void *key);
void fl_req_fail(fl_req *c, const char *op, const char *fmt, ...);
int fl_req_on_reply(fl_req *c, redisReply *r);

#endif
