#!/bin/sh
# Build the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined)
# and run each for FUZZ_SECONDS (default 60) from its committed seed corpus
# (fuzz/corpus/<target>/, read only: new inputs go to a scratch directory).
# Fails on any crash, sanitizer report or harness assertion; the reproducer
# is kept in fuzz/out/.  Prints the executions run per target.
#   sh fuzz/run.sh [target...]     targets: config reply (default both)
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${FUZZ_SECONDS:-60}
CLANG=${CLANG:-$(command -v clang-14 || command -v clang)}
[ -n "$CLANG" ] || { echo "fuzz: clang is not installed" >&2; exit 1; }
LUA_INC=$(pkg-config --variable=includedir lua5.4 2>/dev/null)/lua5.4
out=fuzz/out
mkdir -p "$out"
flags="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all"

build() {
  case $1 in
  config)
    $CLANG $flags -DCONFIG_LUA="\"$root/lua/fluxalock/config.lua\"" -I"$LUA_INC" \
      -o "$out/config_fuzz" fuzz/config_fuzz.c -llua5.4 ;;
  reply)
    $CLANG $flags -I"$LUA_INC" -o "$out/reply_fuzz" fuzz/reply_fuzz.c csrc/*.c \
      -llua5.4 -lhiredis -lssl -lcrypto -lpthread -lm ;;
  *) echo "fuzz: unknown target $1" >&2; return 1 ;;
  esac
}

status=0
total=0
for t in ${*:-config reply}; do
  build "$t" || { status=1; continue; }
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-fuzz-$t.XXXXXX")
  log="$out/$t.log"
  UBSAN_OPTIONS=print_stacktrace=1 "$out/${t}_fuzz" -max_total_time="$secs" -max_len=4096 \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/$t-" \
    "$scratch" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  rm -rf "$scratch"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz $t: ${runs:-?} executions in ${secs} s, exit $rc"
  total=$((total + ${runs:-0}))
  if [ "$rc" -ne 0 ]; then
    status=1
    grep -E 'HARNESS|ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -n 20
  fi
done
echo "fuzz: $total executions in total"
exit $status
