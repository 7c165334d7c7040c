#!/bin/sh
# Run the busted suite against real redis-servers that the specs start
# themselves, and end with the line "N passed, N failed".
# Any redis-server a crashed spec left behind is stopped by its own PID.
set -u
cd "$(dirname "$0")/.."
FLUXALOCK_TEST_PIDS=$(mktemp)
export FLUXALOCK_TEST_PIDS
log=$(mktemp)
lua5.4 /usr/bin/busted "$@" 2>&1 | tee "$log"
rc=$?
while read -r pid; do
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null
done < "$FLUXALOCK_TEST_PIDS"
rm -f "$FLUXALOCK_TEST_PIDS"
# busted: "12 successes / 0 failures / 0 errors / 0 pending : 1.2 seconds"
sum=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' | tail -n 1)
rm -f "$log"
ok=$(echo "$sum" | sed -nE 's/^[^0-9]*([0-9]+) success.*/\1/p')
bad=$(echo "$sum" | sed -nE 's/.* ([0-9]+) failures? \/ ([0-9]+) errors? \/ ([0-9]+) pending.*/\1 \2 \3/p')
if [ -z "$ok" ] || [ -z "$bad" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
set -- $bad
failed=$(( $1 + $2 + $3 )) # a pending spec counts as a failure: none may stay
echo "$ok passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$ok" -gt 0 ] && [ "$rc" -eq 0 ]
