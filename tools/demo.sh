#!/bin/sh
# shellcheck disable=SC2317 # alive and stop_server run from the EXIT trap
# make demo: run the examples against $FLUXALOCK_URL or, when it is unset, a
# private redis-server on a free loopback port, started here and stopped by
# its own PID on the way out.  (make demo installs the Debian packages and
# builds fluxalock/core.so before it calls this.)
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
LUA=${LUA:-lua5.4}
export LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;${LUA_PATH:-;}"
export LUA_CPATH="$root/?.so;${LUA_CPATH:-;}"

[ -f fluxalock/core.so ] || make --no-print-directory all

dir=""
pid=""
# is process $1 running?  An exited one that nobody reaped yet (a zombie)
# counts as gone.
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  ! sed -E 's/^[0-9]+ \(.*\) //' "/proc/$1/stat" 2>/dev/null | grep -q '^[ZX]'
}
stop_server() {
  if [ -n "$pid" ] && alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    n=0 # it saves nothing (--save ''), so it is gone in a moment
    while alive "$pid" && [ "$n" -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  pid=""
  if [ -n "$dir" ]; then rm -rf "$dir"; fi
  dir=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${FLUXALOCK_URL:-}" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-demo.XXXXXX")
  tries=0
  while [ -z "$pid" ]; do
    tries=$((tries + 1))
    if [ $tries -gt 20 ]; then
      echo "demo: could not start redis-server; its last log:" >&2
      cat "$dir/redis.log" >&2 || true
      exit 1
    fi
    port=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000))
    rm -f "$dir/redis.pid" "$dir/redis.log"
    # loopback only; no persistence; the Unix socket is only for the health
    # check, so a server that already owns $port can never answer it
    redis-server --port "$port" --bind 127.0.0.1 --protected-mode yes \
      --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
      --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
      --daemonize yes --save '' --appendonly no >/dev/null 2>&1 || continue
    n=0 # the pidfile appears once the port is bound; PONG once it serves
    while [ $n -lt 100 ]; do
      if [ -s "$dir/redis.pid" ] &&
        [ "$(redis-cli -s "$dir/redis.sock" ping 2>/dev/null)" = PONG ]; then
        pid=$(cat "$dir/redis.pid")
        break
      fi
      # the port was taken: try another one
      grep -qE 'Could not create server TCP|Failed listening' "$dir/redis.log" 2>/dev/null && break
      sleep 0.05
      n=$((n + 1))
    done
    if [ -z "$pid" ] && [ -s "$dir/redis.pid" ]; then # started, then failed
      kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
  done
  FLUXALOCK_URL="redis://127.0.0.1:$port/0"
  export FLUXALOCK_URL
  echo "demo: private redis-server (pid $pid) at $FLUXALOCK_URL"
else
  echo "demo: using FLUXALOCK_URL"
fi

# FLUXALOCK_DEMO_RUNNER: a command the examples run under (a valgrind
# command line ending with the interpreter; see tools/valgrind-examples.sh)
run=${FLUXALOCK_DEMO_RUNNER:-$LUA}
status=0
for ex in non_blocking waiting ttl_refresh scoped; do
  echo
  echo "== examples/$ex.lua"
  # shellcheck disable=SC2086 # $run is a command line: split it
  $run "examples/$ex.lua" || { status=1; echo "== examples/$ex.lua FAILED" >&2; }
done
exit $status
