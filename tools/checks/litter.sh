#!/bin/sh
# CI: a spec file run alone with plain busted (not through tools/test.sh,
# whose own sweep would hide what it left) leaves nothing behind: no file
# or directory, no process.  Each file runs with a TMPDIR of its own, which
# must be empty afterwards, and no process may still carry it in its
# environment (tools/checks/lib/leftover.sh; processes are found through
# /proc/<pid>/environ, never by name).
#
#   sh tools/checks/litter.sh [spec/x_spec.lua ...]
#
# Without arguments: tools/checks/lib/leaky_spec.lua (a spec file that
# leaves everything behind on purpose: the harness must clean up after it,
# spec/support/tmp.lua), then spec files that start servers, children,
# sentinels, proxies and DNS servers.  Also: the specs make temporary files
# only through the harness (R.tmpdir, R.tmpfile), never in /tmp directly.
set -u
cd "$(dirname "$0")/../.."
status=0

direct=$(grep -nE 'os\.tmpname|mktemp|open\("/tmp/' spec/*.lua spec/support/*.lua |
  grep -v '^spec/support/tmp\.lua:' || true)
if [ -n "$direct" ]; then
  echo "litter: temporary files made outside spec/support/tmp.lua (use R.tmpdir/R.tmpfile):"
  echo "$direct"
  status=1
fi

if [ $# -eq 0 ]; then
  set -- tools/checks/lib/leaky_spec.lua spec/host_custom_spec.lua spec/fault_soak_spec.lua \
    spec/command_spec.lua spec/sentinel_spec.lua spec/tls_spec.lua
fi
for spec in "$@"; do
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-litter.XXXXXX")
  log=$(mktemp)
  env -u FLUXALOCK_TEST_PIDS TMPDIR="$dir" FLUXALOCK_SOAK_SECONDS="${FLUXALOCK_SOAK_SECONDS:-8}" \
    lua5.4 /usr/bin/busted -o TAP "$spec" >"$log" 2>&1
  n_ok=$(grep -c '^ok ' "$log")
  n_bad=$(grep -c '^not ok ' "$log")
  case $spec in
  *leaky_spec.lua) # four cases pass and one fails, on purpose
    if [ "$n_ok" -ne 4 ] || [ "$n_bad" -ne 1 ]; then
      echo "litter: $spec: expected 4 passed and 1 failed, got $n_ok and $n_bad:"
      tail -n 20 "$log"
      status=1
    fi ;;
  esac
  if env -u TMPDIR sh tools/checks/lib/leftover.sh "$dir" "$spec"; then
    echo "litter: $spec ($n_ok passed, $n_bad failed): nothing left"
  else
    status=1
  fi
  rm -f "$log"
done
exit $status
