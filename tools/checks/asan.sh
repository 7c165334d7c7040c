#!/bin/sh
# CI: the whole busted suite against an ASan+UBSan build of the core, leak
# detection on (make check-asan runs the same, with the full soak).  The
# soak is shortened to 8 s here to keep CI within its budget.
# With FLUXALOCK_PART=k/n (make test's jobs) only part k of n of the spec
# files runs (tools/checks/lib/part.sh).
cd "$(dirname "$0")/../.." || exit 1
if [ -n "${FLUXALOCK_PART:-}" ]; then
  # shellcheck disable=SC2046
  set -- $(sh tools/checks/lib/part.sh "$FLUXALOCK_PART" spec/*_spec.lua)
fi
FLUXALOCK_SOAK_SECONDS=${FLUXALOCK_SOAK_SECONDS:-8} sh tools/checks/lib/sanitize.sh asan "$@" \
  "--filter-out=in a forked child" "--filter-out=an LD_PRELOAD allocator"
# The forked-child renewal spec runs in the plain suite only: GCC 12's ASan
# allocator is not fork-safe while another thread allocates (glibc's malloc
# is: it locks its arenas around fork).  A child forked while the parent's
# renewal thread held an allocator lock inherits it held, and the child's
# own renewal thread then waits on it for ever (seen with gdb: the child's
# thread in SizeClassAllocator64::GetFromAllocator, its main thread joining
# it at exit), about one run in four on a loaded machine.
# The allocation-failure specs that interpose malloc with LD_PRELOAD
# (spec/allocfail_spec.lua, "an LD_PRELOAD allocator") run in the plain
# suite only: ASan's runtime replaces malloc itself, so the interposer never
# sees a call (those that fail the Lua allocator run here too).
