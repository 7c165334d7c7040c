#!/bin/sh
# The test command (make test): the busted suite against real redis-servers
# that the specs start themselves, then every tools/checks/*.sh (sanitizer,
# valgrind, fuzz and lint runs; each counts as one test).  Ends with the line
# "N passed, N failed" and exits non-zero on any failure.
# Any redis-server a crashed spec left behind is stopped by its own PID.
# The run gets a TMPDIR of its own: whatever is left in it after busted (a
# file, a directory, a process that carries it in its environment) counts as
# one more failure (tools/checks/lib/leftover.sh), and so after the checks.
set -u
cd "$(dirname "$0")/.."
FLUXALOCK_TEST_PIDS=$(mktemp)
export FLUXALOCK_TEST_PIDS
log=$(mktemp)
run=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-run.XXXXXX")
# at the end, and on Ctrl-C: any process recorded there still running is
# stopped by its PID, and the run's files are removed
finish() {
  while read -r pid; do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null
  done < "$FLUXALOCK_TEST_PIDS"
  rm -rf "$run" "$FLUXALOCK_TEST_PIDS" "$log"
}
trap finish EXIT
trap 'exit 130' INT TERM
TMPDIR=$run
export TMPDIR
passed=0
failed=0
nargs=$#

lua5.4 /usr/bin/busted "$@" 2>&1 | tee "$log"
# busted: "12 successes / 0 failures / 0 errors / 0 pending : 1.2 seconds"
sum=$(sed 's/\x1b\[[0-9;]*m//g' "$log" |
  grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' | tail -n 1)
ok=$(echo "$sum" | sed -nE 's/^[^0-9]*([0-9]+) success.*/\1/p')
bad=$(echo "$sum" | sed -nE 's/.* ([0-9]+) failures? \/ ([0-9]+) errors? \/ ([0-9]+) pending.*/\1 \2 \3/p')
if [ -z "$ok" ] || [ -z "$bad" ]; then
  echo "busted did not finish (no summary line)"
  failed=$((failed + 1))
else
  # shellcheck disable=SC2086
  set -- $bad
  passed=$((passed + ok))
  failed=$((failed + $1 + $2 + $3)) # a pending spec counts as failed
fi
# the suite's own temporary files and processes are gone when busted is
if ! env -u TMPDIR sh tools/checks/lib/leftover.sh "$run" "the busted run"; then
  failed=$((failed + 1))
fi
mkdir -p "$run"

# extra checks only when the whole suite was asked for (no busted arguments)
if [ "$nargs" -eq 0 ]; then
  for check in tools/checks/*.sh; do
    [ -e "$check" ] || continue
    [ -n "${FLUXALOCK_SKIP_CHECKS:-}" ] && break
    echo "== check: $check"
    if sh "$check"; then
      passed=$((passed + 1)); echo "== ok: $check"
    else
      failed=$((failed + 1)); echo "== FAILED: $check"
    fi
  done
  if ! env -u TMPDIR sh tools/checks/lib/leftover.sh "$run" "the checks"; then
    failed=$((failed + 1))
  fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
