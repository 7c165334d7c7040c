#!/bin/sh
# CI: a representative subset of the suite under valgrind memcheck (every
# lua5.4 process: zero errors, definitely lost 0).  The subset covers every
# Lock method and metamethod (__gc, __close, lua_close), every error path of
# bad input and AUTH, the fence and the ACL user, and TLS with OpenSSL
# loaded (all but its 1000-coroutine burst: 1000 handshakes under memcheck
# take minutes, and the same paths run in its other cases).  No case here
# bounds time: the specs that do (faults, soak, scenarios) are left to make
# check-valgrind, which runs all, and the cases of these files that do carry
# the tag #timing and are left out.  The suite's verdict counts: a failing
# case fails this check.
# With FLUXALOCK_PART=k/n (make test's jobs) only part k of n of these
# files runs (tools/checks/lib/part.sh).
cd "$(dirname "$0")/../.." || exit 1
set -- spec/lock_spec.lua spec/lifecycle_spec.lua spec/badinput_spec.lua \
  spec/fence_spec.lua spec/security_spec.lua spec/tls_spec.lua
if [ -n "${FLUXALOCK_PART:-}" ]; then
  # shellcheck disable=SC2046
  set -- $(sh tools/checks/lib/part.sh "$FLUXALOCK_PART" "$@")
fi
FLUXALOCK_SUITE_COUNTS=1 sh tools/checks/lib/sanitize.sh valgrind "$@" \
  "--filter-out=1000 coroutines" --exclude-tags=timing

