/*
 * net.h: the non-blocking transport (plain TCP and Unix sockets here).
 * fl_net_open starts a connection; fl_net_step moves it on (FL_DONE once
 * usable, FL_WAIT: poll fl_net_fd for fl_net_events, FL_ERR); then
 * fl_net_send/fl_net_recv move bytes (>0, 0 would block, -1 error/EOF).
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
const char *fl_net_error(const fl_net *n);
void fl_net_close(fl_net *n);

#endif
