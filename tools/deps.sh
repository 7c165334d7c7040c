#!/bin/sh
# Install the Debian packages fluxalock needs to build, test and demo,
# when they are missing.  Idempotent: a machine that has them all is left
# alone (no apt-get at all).
set -eu
PACKAGES="make gcc pkg-config lua5.4 liblua5.4-dev libhiredis-dev redis-server
redis-tools lua-busted lua-cqueues lua-luv redis-sentinel
lua-socket libssl-dev openssl clang libclang-rt-14-dev valgrind cppcheck clang-tidy lua-check
luarocks python3-redis lua-http wrk"
# a target that needs more passes it: sh tools/deps.sh <package>...
PACKAGES="$PACKAGES $*"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "fluxalock: installing:$missing" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"
else
  echo "fluxalock: missing Debian packages:$missing (run as root, or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
