#!/bin/sh
# The node packages of spec/interop_spec.lua (node-redlock 5 on ioredis),
# installed from the npm registry into the ignored build/interop-npm, once:
# a tree that has them is left alone (no npm at all).  make deps (and so
# make test) runs this after tools/deps.sh; the specs never install
# anything.  Without node and npm on the PATH, or without the registry, it
# says so in one line and exits 1; the interop spec then fails in one case
# that names the same cause.
set -u
cd "$(dirname "$0")/.."
dir=build/interop-npm
PACKAGES="redlock@5.0.0-beta.2 ioredis@5"

[ -f "$dir/node_modules/redlock/package.json" ] &&
  [ -f "$dir/node_modules/ioredis/package.json" ] && exit 0

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fluxalock: $tool is not on the PATH: spec/interop_spec.lua needs node and npm (Debian: nodejs npm)" >&2
    exit 1
  fi
done
mkdir -p "$dir"
echo "fluxalock: installing $PACKAGES into $dir (npm)" >&2
# shellcheck disable=SC2086
if ! out=$(timeout 300 npm install --no-save --no-audit --no-fund --prefix "$dir" $PACKAGES 2>&1); then
  echo "$out" | tail -n 5 >&2
  echo "fluxalock: npm could not install $PACKAGES into $dir (is the npm registry reachable?)" >&2
  exit 1
fi
