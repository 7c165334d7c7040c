#!/bin/sh
# make valgrind-examples: run the examples as make demo does, each one and
# every process it starts (the contenders A and B, through sh) under
# valgrind --leak-check=full, then report each Lua process's "definitely
# lost" figure.  Fails on any leak (definite or possible) or memory error.
set -eu
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null 2>&1 || {
  echo "valgrind-examples: valgrind is not installed (apt-get install valgrind)" >&2
  exit 1
}
logs=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-valgrind.XXXXXX")
trap 'rm -rf "$logs"' EXIT

status=0
FLUXALOCK_DEMO_RUNNER="valgrind --leak-check=full --trace-children=yes \
--child-silent-after-fork=yes --vgdb=no --trace-children-skip=*/rm,*/mktemp \
--trace-children-skip-by-arg=*mktemp* --log-file=$logs/%p.log ${LUA:-lua5.4}" \
  sh tools/demo.sh || status=1

echo
echo "== valgrind"
n=0
for log in "$logs"/*.log; do
  cmd=$(sed -n 's/^==[0-9]*== Command: //p' "$log")
  case "${cmd%% *}" in
    *lua*) ;;
    *) # the shell that starts A and B: no errors, not listed (a shell that
       # handed over to an untraced rm ends without a summary)
      if grep -q 'ERROR SUMMARY' "$log" && ! grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
        cat "$log"; status=1
      fi
      continue ;;
  esac
  n=$((n + 1))
  lost=$(sed -n 's/^==[0-9]*== *definitely lost: //p' "$log")
  grep -q 'All heap blocks were freed' "$log" && lost="0 bytes in 0 blocks (all heap blocks freed)"
  errors=$(sed -n 's/^==[0-9]*== ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log")
  echo "$cmd: definitely lost: ${lost:-?}; errors: ${errors:-?}"
  if [ "${errors:-1}" != 0 ]; then cat "$log"; status=1; fi
done
[ "$n" -ge 8 ] || { echo "valgrind-examples: $n Lua processes traced, expected 8 (3 + 3 + 1 + 1)" >&2; status=1; }
[ $status -eq 0 ] && echo "valgrind-examples: ok"
exit $status
