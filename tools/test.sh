#!/bin/sh
# The test command (make test): the busted suite against real redis-servers
# that the specs start themselves, then every tools/checks/*.sh (sanitizer,
# valgrind, fuzz and lint runs; each counts as one test).  Ends with the line
# "N passed, N failed" and exits non-zero on any failure.
#
#   sh tools/test.sh                  everything, as jobs
#   sh tools/test.sh spec/x_spec.lua  busted with these arguments, in turn
#
# The whole suite runs as jobs: each spec file in a busted process of its
# own, each check, FLUXALOCK_TEST_JOBS of them at a time (default 3; 1 runs
# them one after another), the longest first (tools/test-times.txt).  No two jobs
# share anything: each has a TMPDIR and a list of PIDs of its own, its
# redis-servers on free ports of their own.  A job's output is printed whole
# when it ends, never interleaved with another's.  With more than one job
# at a time the ASan rerun is cut in FLUXALOCK_ASAN_PARTS parts (default 4,
# by tools/checks/lib/part.sh), and the checks that are CPU work for all
# their time (valgrind, the fuzzers, the linters, the install's builds) run
# one after another in a lane of their own beside the others; one at a
# time, each runs whole (docs/reliability.md, "The test run").
# FLUXALOCK_SKIP_CHECKS=1 leaves the checks out (spec files only).
# The run ends with each failed job again in brief and their names, so
# that the last lines of a log (a CI page) say what failed.
#
# Any redis-server a crashed spec left behind is stopped by its own PID.
# Each busted run gets a TMPDIR of its own: whatever is left in it afterwards
# (a file, a directory, a process that carries it in its environment)
# counts as one more failure (tools/checks/lib/leftover.sh).
set -u
cd "$(dirname "$0")/.."

# busted's summary line, "12 successes / 0 failures / 0 errors / 0 pending :
# 1.2 seconds", as "passed failed" (a pending spec counts as failed);
# nothing when busted did not finish
busted_counts() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" |
    grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' | tail -n 1 |
    sed -nE 's/^[^0-9]*([0-9]+) success(es)? \/ ([0-9]+) failures? \/ ([0-9]+) errors? \/ ([0-9]+) pending.*/\1 \3 \4 \5/p' |
    { read -r ok f e p && echo "$ok $((f + e + p))"; }
}

# stop what a PID list names that still runs.  Each line is "pid start"
# (spec/support/tmp.lua): the process's start time, field 22 of
# /proc/<pid>/stat.  Only the process with that start time is ours: pids
# wrap at 32768 here every few minutes of a busy run, and a number a job
# recorded minutes ago may be another job's process by now, or another
# run's
# (its variables are named for it alone: sh has no local ones, and a job's
# own "start" is read after this)
stop_listed() { # stop_listed <list>
  while read -r listed_pid listed_start; do
    [ -n "${listed_start:-}" ] || continue
    listed_stat=$(cat "/proc/$listed_pid/stat" 2>/dev/null) || continue
    # the fields after "pid (name) ": the state, ..., the start time 20th
    set -- ${listed_stat##*") "}
    [ "${20:-}" = "$listed_start" ] && kill "$listed_pid" 2>/dev/null
  done <"$1"
}

# one job (a spec file, a check, or a part of one), with a TMPDIR and a PID
# list of its own: appends "name passed failed seconds" to $results and
# prints its output in one piece under the run's lock
if [ "${1:-}" = "--job" ]; then
  name=$2 results=$3 lock=$4
  # beside the run's directory, not inside it: Unix socket paths are short
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fl-job.XXXXXX")
  pids=$(mktemp "${TMPDIR:-/tmp}/fl-pids.XXXXXX")
  log=$(mktemp "${TMPDIR:-/tmp}/fl-log.XXXXXX")
  start=$(date +%s)
  case $name in
  spec/*)
    TMPDIR=$dir FLUXALOCK_TEST_PIDS=$pids lua5.4 /usr/bin/busted "$name" >"$log" 2>&1
    counts=$(busted_counts "$log")
    [ -n "$counts" ] || { echo "busted did not finish (no summary line)" >>"$log"; counts="0 1"; } ;;
  asan:* | valgrind:*)
    check=tools/checks/${name%%:*}.sh
    echo "== check: $check, part ${name#*:}" >"$log"
    part=${name#*:}
    [ "${part#*/}" = 1 ] && part= # one part: the check whole, as it is alone
    if TMPDIR=$dir FLUXALOCK_TEST_PIDS=$pids FLUXALOCK_PART=$part sh "$check" >>"$log" 2>&1; then
      counts="1 0"; echo "== ok: $name" >>"$log"
    else
      counts="0 1"; echo "== FAILED: $name" >>"$log"
    fi ;;
  *)
    echo "== check: $name" >"$log"
    if TMPDIR=$dir FLUXALOCK_TEST_PIDS=$pids sh "$name" >>"$log" 2>&1; then
      counts="1 0"; echo "== ok: $name" >>"$log"
    else
      counts="0 1"; echo "== FAILED: $name" >>"$log"
    fi ;;
  esac
  stop_listed "$pids"
  if ! env -u TMPDIR sh tools/checks/lib/leftover.sh "$dir" "$name" >>"$log" 2>&1; then
    counts="${counts% *} $((${counts#* } + 1))"
  fi
  secs=$(($(date +%s) - start))
  # the CPU seconds of its processes (user + system), as "times" counts
  # the children this shell waited for
  times >"$log.cpu" # in this shell: in a pipeline it would count the pipeline's
  cpu=$(tail -n 1 "$log.cpu" | awk '{ n = 0; for (i = 1; i <= NF; i++) { split($i, a, "m"); n += a[1] * 60 + a[2] } printf "%d", n }')
  echo "$name $counts $secs $cpu" >>"$results"
  # a failed job's output is kept for the run's end, where the last lines
  # (all a CI page may show) name it and quote its failures
  [ "${counts#* }" -eq 0 ] || cp "$log" "$results.failed.$(echo "$name" | tr '/:' '__')"
  flock "$lock" sh -c 'cat "$1"; echo "== $2: $3 passed, $4 failed, $5 s ($6 s of CPU)"' sh "$log" "$name" $counts "$secs" "$cpu"
  rm -f "$log" "$log.cpu" "$pids"
  exit 0
fi

FLUXALOCK_TEST_PIDS=$(mktemp)
export FLUXALOCK_TEST_PIDS
log=$(mktemp)
run=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-run.XXXXXX")
# at the end, and on Ctrl-C: any process recorded there still running is
# stopped by its PID, and the run's files are removed
finish() {
  stop_listed "$FLUXALOCK_TEST_PIDS"
  rm -rf "$run" "$FLUXALOCK_TEST_PIDS" "$log"
}
trap finish EXIT
trap 'exit 130' INT TERM
TMPDIR=$run
export TMPDIR
passed=0
failed=0

if [ $# -gt 0 ]; then
  # the given busted arguments, in one busted run
  lua5.4 /usr/bin/busted "$@" 2>&1 | tee "$log"
  counts=$(busted_counts "$log")
  if [ -z "$counts" ]; then
    echo "busted did not finish (no summary line)"
    failed=$((failed + 1))
  else
    passed=${counts% *} failed=${counts#* }
  fi
  # the suite's own temporary files and processes are gone when busted is
  if ! env -u TMPDIR sh tools/checks/lib/leftover.sh "$run" "the busted run"; then
    failed=$((failed + 1))
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit
fi

# the jobs, the longest first by the times of an earlier run (one not timed
# yet first of all: it may be long)
jobs=${FLUXALOCK_TEST_JOBS:-3}
cpu_bound='^(valgrind:|tools/checks/(fuzz|clang-tidy|cppcheck|install|luacheck)\.sh)'
if [ "$jobs" -gt 1 ]; then
  asan_parts=${FLUXALOCK_ASAN_PARTS:-4} valgrind_parts=${FLUXALOCK_VALGRIND_PARTS:-1}
else
  asan_parts=${FLUXALOCK_ASAN_PARTS:-1} valgrind_parts=${FLUXALOCK_VALGRIND_PARTS:-1}
fi
{
  for spec in spec/*_spec.lua; do echo "$spec"; done
  if [ -z "${FLUXALOCK_SKIP_CHECKS:-}" ]; then
    for check in tools/checks/*.sh; do
      case $check in
      */asan.sh) i=1; while [ "$i" -le "$asan_parts" ]; do echo "asan:$i/$asan_parts"; i=$((i + 1)); done ;;
      */valgrind.sh) i=1; while [ "$i" -le "$valgrind_parts" ]; do echo "valgrind:$i/$valgrind_parts"; i=$((i + 1)); done ;;
      *) echo "$check" ;;
      esac
    done
  fi
} | awk 'FILENAME != "-" { t[$1] = $2; next } { print (($0 in t) ? t[$0] : 100000), $0 }' \
  tools/test-times.txt - | sort -k1,1nr -k2 | cut -d' ' -f2 >"$run/jobs"

results=$run/results
: >"$results"
start=$(date +%s)
n=$(wc -l <"$run/jobs")
# each job makes its own directories beside the run's, in the TMPDIR this
# run was given
lane() { # lane <width> <job list>
  env TMPDIR="$(dirname "$run")" xargs -P "$1" -I{} \
    sh tools/test.sh --job {} "$results" "$run/lock" <"$2"
}
if [ "$jobs" -gt 1 ]; then
  # side by side, the checks that are CPU work all the time they run
  # (valgrind, the fuzzers, the linters, the install's builds) go one after
  # another in a lane of their own: together they would take both cores
  # from the spec files, which mostly wait
  grep -E "$cpu_bound" "$run/jobs" >"$run/heavy"
  grep -vE "$cpu_bound" "$run/jobs" >"$run/light"
  echo "== $n jobs, $jobs at a time and $(wc -l <"$run/heavy") CPU-bound checks one at a time beside them"
  lane 1 "$run/heavy" &
  lane "$jobs" "$run/light"
  wait
else
  echo "== $n jobs, one at a time"
  lane 1 "$run/jobs"
fi

while read -r name ok bad secs cpu; do
  passed=$((passed + ok)) failed=$((failed + bad))
done <"$results"
done_jobs=$(wc -l <"$results")
if [ "$done_jobs" -ne "$n" ]; then
  echo "$((n - done_jobs)) of $n jobs did not report"
  failed=$((failed + n - done_jobs))
fi
if [ -n "${FLUXALOCK_TEST_TIMES:-}" ]; then
  sort -k4,4nr "$results" | awk '{ print $1, $4, $5 }' >"$FLUXALOCK_TEST_TIMES"
fi
# each failed job again, briefly: busted's failure headers and sanitizer
# or check verdicts with the lines after them (else its last lines)
while read -r name ok bad secs cpu; do
  f=$results.failed.$(echo "$name" | tr '/:' '__')
  [ "$bad" -gt 0 ] && [ -e "$f" ] || continue
  echo "== failed: $name"
  awk '/(Failure|Error) →|ERROR:|SUMMARY:|FAILED|leftover:|did not finish/ { n = 5 }
       n > 0 { print "   " $0; n--; if (++shown == 40) exit }' "$f" >"$f.x"
  if [ -s "$f.x" ]; then cat "$f.x"; else tail -n 10 "$f" | sed 's/^/   /'; fi
done <"$results"
echo "== the slowest jobs: $(sort -k4,4nr "$results" | head -n 5 | awk '{ printf "%s%s %s s", s, $1, $4; s = ", " }')"
echo "== $n jobs in $(($(date +%s) - start)) s"

failed_jobs=$(awk '$3 > 0 { printf "%s%s", s, $1; s = ", " }' "$results")
[ -z "$failed_jobs" ] || echo "== failed jobs: $failed_jobs"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
