/*
 * The names of the failure codes (fluxalock.h FL_E_*), as a program sees
 * them in the third value of nil, message, code and in a log event's
 * 'code' (API.md "Errors a program can branch on").
 */
#include "fluxalock.h"

const char *fl_code_name(int code) {
  static const char *const names[] = {
    "io", "connect", "timeout", "io", "auth", "tls", "server",
    "replicas", "quorum", "limit", "lost", "not_obtained"};
  if (code < 0 || code >= (int)(sizeof names / sizeof names[0])) return "io";
  return names[code];
}
