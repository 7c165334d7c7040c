#!/bin/sh
# CI: a test machine that lacks what some cases need gets one failure per
# missing thing, naming it, and the sanitizer reruns do not count it again.
# Simulated here: unshare failing as it does in a plain chroot ("cannot
# change root filesystem propagation"), and no node packages (an empty
# FLUXALOCK_INTEROP_NPM).  Each spec runs with plain busted, first as the
# suite does, then with the filter tools/checks/lib/sanitize.sh adds.
set -u
cd "$(dirname "$0")/../.."
work=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-machine.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$work/npm"
cat >"$work/bin/unshare" <<'SH'
#!/bin/sh
echo "unshare: cannot change root filesystem propagation: Invalid argument" >&2
exit 1
SH
chmod +x "$work/bin/unshare"
status=0

# expect <what> <want ok> <want not ok> <message or ""> -- busted arguments...
expect() {
  what=$1 want_ok=$2 want_bad=$3 msg=$4
  shift 5
  PATH="$work/bin:$PATH" FLUXALOCK_INTEROP_NPM="$work/npm" \
    lua5.4 /usr/bin/busted -o TAP "$@" >"$work/log" 2>&1
  ok=$(grep -c '^ok ' "$work/log")
  bad=$(grep -c '^not ok ' "$work/log")
  if [ "$ok" -ne "$want_ok" ] || [ "$bad" -ne "$want_bad" ] ||
     { [ -n "$msg" ] && ! grep -qF "$msg" "$work/log"; }; then
    echo "machine: $what: expected $want_ok passed and $want_bad failed${msg:+ saying '$msg'}, got $ok and $bad:"
    tail -n 20 "$work/log"
    status=1
  else
    echo "machine: $what: $ok passed, $bad failed, as expected"
  fi
}

expect "DNS cases without a mount namespace" 0 1 \
  "test machine: the DNS cases need a private mount namespace" -- --filter="host names" spec/tls_spec.lua
expect "the same, as sanitize.sh reruns it" 0 0 "" -- --filter="host names" "--filter-out=test machine:" spec/tls_spec.lua
expect "interop without its node packages" 2 1 \
  "test machine: node-redlock and ioredis are not in $work/npm: run make deps" -- spec/interop_spec.lua
expect "the same, as sanitize.sh reruns it" 2 0 "" -- "--filter-out=test machine:" spec/interop_spec.lua
exit $status
