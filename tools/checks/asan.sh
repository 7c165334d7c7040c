#!/bin/sh
# CI: the whole busted suite against an ASan+UBSan build of the core, leak
# detection on (make check-asan runs the same, with the full soak).  The
# soak is shortened to 8 s here to keep CI within its budget.
cd "$(dirname "$0")/../.." &&
  FLUXALOCK_SOAK_SECONDS=${FLUXALOCK_SOAK_SECONDS:-8} sh tools/checks/lib/sanitize.sh asan
