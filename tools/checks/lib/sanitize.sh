#!/bin/sh
# Run the busted suite (or the given spec files) against a sanitized build
# of the core, in a private copy of the tree (the shared checkout's
# fluxalock/core.so is never replaced).
#
#   sh tools/checks/lib/sanitize.sh asan     [spec/x_spec.lua ...]
#   sh tools/checks/lib/sanitize.sh valgrind [spec/x_spec.lua ...]
#
# asan: the core (and examples/embed) built with gcc -fsanitize=address,
#   undefined (-fno-sanitize-recover); every lua5.4 process the suite
#   starts -- busted, R.spawn children, the proxy -- is /usr/bin/lua5.4 with
#   libasan LD_PRELOADed, leak detection on.  A second tiny preload removes
#   LD_PRELOAD from the environment at start, so that redis-server and
#   redis-cli started by the specs run unsanitized (a lua5.4 child gets it
#   back through the wrapper).  Reports go to files; any report fails.
# valgrind: the core built -O1 -g; every lua5.4 process runs under valgrind
#   memcheck; every log must say "ERROR SUMMARY: 0 errors" and
#   "definitely lost: 0 bytes" (or that all heap blocks were freed).  Under
#   valgrind the suite is 20-50x slower, so a case that bounds time can
#   fail for that reason alone: the whole suite's verdict is valgrind's.
#   A subset without such cases (they carry the tag #timing; the caller
#   passes --exclude-tags=timing) sets FLUXALOCK_SUITE_COUNTS=1, and then
#   the suite must pass too (tools/checks/valgrind.sh).
# With asan the suite must pass.  The cases named "test machine: ..."
# (what this machine lacks to run some cases: a mount namespace, node) are
# the plain suite's to report; a rerun here would only count the same cause
# again, so they are left out.
# Exit status 0 only when no sanitizer report / valgrind finding was made
# and (for asan, or with FLUXALOCK_SUITE_COUNTS=1) the suite passed.
set -u
mode=${1:?usage: sanitize.sh asan|valgrind [spec files]}
shift
root=$(cd "$(dirname "$0")/../../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-$mode.XXXXXX")
[ -n "${FLUXALOCK_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$work/tree" "$work/bin" "$work/log"
# the working tree as it is (uncommitted files included), without builds
tar -C "$root" --exclude=./.git --exclude=./fluxalock --exclude='*.o' \
  --exclude=./examples/embed/embed --exclude=./bench/out -cf - . |
  tar -C "$work/tree" -xf -
cd "$work/tree"
real_lua=$(command -v lua5.4)

case $mode in
asan)
  san="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
  make --no-print-directory CC=gcc OPT="$san" all examples >"$work/build.log" 2>&1 || {
    cat "$work/build.log"; exit 1; }
  asanlib=$(gcc -print-file-name=libasan.so)
  # dlclose does nothing: lua_close unloads every C module (fluxalock's,
  # LuaSocket's, luv, cqueues), and a leak report made at exit could then
  # name no frame of the module that allocated ("<unknown module>").  With
  # modules mapped until exit, every report names its module and line; what
  # a module keeps in its static variables for the process's life is
  # reachable then, as it is in a program that never unloads it
  cat >"$work/bin/unpreload.c" <<'C'
#include <stdlib.h>
/* runs at load: the sanitizer runtime is in; children need not inherit it */
__attribute__((constructor)) static void unpreload(void) { unsetenv("LD_PRELOAD"); }
int dlclose(void *handle);
int dlclose(void *handle) { (void)handle; return 0; }
C
  gcc -shared -fPIC -o "$work/bin/unpreload.so" "$work/bin/unpreload.c" || exit 1
  # argv[0] stays the wrapper's path: a script that re-runs its own
  # interpreter (arg[-1], as the examples do) comes back through here
  cat >"$work/bin/lua5.4" <<SH
#!/bin/bash
LD_PRELOAD="$asanlib $work/bin/unpreload.so" exec -a "\$0" $real_lua "\$@"
SH
  # leaks: on, reported at exit of every lua5.4 process
  export ASAN_OPTIONS="detect_leaks=1:log_path=$work/log/asan:log_exe_name=1:halt_on_error=1:detect_odr_violation=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/log/ubsan"
  export LSAN_OPTIONS="suppressions=$root/tools/checks/lib/lsan.supp:print_suppressions=0"
  ;;
valgrind)
  make --no-print-directory OPT="-O1 -g" all examples >"$work/build.log" 2>&1 || {
    cat "$work/build.log"; exit 1; }
  # --run-libc-freeres=no: at exit valgrind has glibc unload its NSS modules
  # (libnss_dns), which a name lookup's thread that its caller abandoned at
  # connect_timeout may still be running in; that thread then jumps into
  # unmapped code.  A normal exit never unloads them, and what freeres frees
  # is glibc's own one-time state, which only shows as "still reachable".
  cat >"$work/bin/lua5.4" <<SH
#!/bin/sh
exec valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --run-libc-freeres=no --errors-for-leak-kinds=definite --child-silent-after-fork=yes --num-callers=30 \
  --vgdb=no \
  --log-file=$work/log/vg.%p $real_lua "\$@"
SH
  # the harness's waits for a condition (their timeouts only stop a hang)
  # allow 6 times as long: every process here is 20-50 times slower
  export FLUXALOCK_WAIT_SCALE=6
  ;;
*) echo "sanitize.sh: unknown mode $mode" >&2; exit 2 ;;
esac
chmod +x "$work/bin/lua5.4"
export PATH="$work/bin:$PATH"

FLUXALOCK_SKIP_CHECKS=1 sh tools/test.sh "$@" "--filter-out=test machine:" >"$work/suite.log" 2>&1
suite=$?
sed 's/\x1b\[[0-9;]*m//g' "$work/suite.log" | grep -vE '^[●◼✱ ]*$' | tail -n 40

status=0
case $mode in
asan)
  reports=$(ls "$work/log" | wc -l)
  for f in "$work"/log/*; do
    [ -e "$f" ] || continue
    echo "== sanitizer report: $(basename "$f")"
    head -n 60 "$f"
  done
  echo "asan: suite exit $suite, $reports sanitizer report(s)"
  [ "$reports" -eq 0 ] && [ "$suite" -eq 0 ] || status=1
  ;;
valgrind)
  n=0 bad=0 cut=0
  for f in "$work"/log/vg.*; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    if ! grep -q 'ERROR SUMMARY' "$f"; then
      cut=$((cut + 1)) # killed by a spec (SIGKILL): no summary to judge
      continue
    fi
    if ! grep -q 'ERROR SUMMARY: 0 errors' "$f" ||
       ! { grep -q 'definitely lost: 0 bytes' "$f" || grep -q 'All heap blocks were freed' "$f" ||
           ! grep -q 'definitely lost:' "$f"; }; then
      bad=$((bad + 1))
      echo "== valgrind finding: $(sed -n 's/^==[0-9]*== Command: //p' "$f")"
      grep -E '^==[0-9]+== ' "$f" | head -n 80
    fi
  done
  echo "valgrind: $n lua5.4 processes, $bad with errors or definite leaks, $cut killed before their summary (suite exit $suite)"
  [ "$bad" -eq 0 ] && [ "$n" -gt 0 ] || status=1
  [ "${FLUXALOCK_SUITE_COUNTS:-}" != 1 ] || [ "$suite" -eq 0 ] || status=1
  ;;
esac
exit $status
