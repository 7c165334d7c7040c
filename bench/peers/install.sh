#!/bin/sh
# The node peers of W6/W7 (bench/stampede.lua): the versions pinned in
# bench/peers/package-lock.json, installed with npm ci into build/bench-peers
# (ignored by git), once: nothing is done when that install is current.
# node (20 here) and npm come from outside tools/deps.sh, as for
# spec/interop_spec.lua; without them W6/W7 run fluxalock alone.
set -eu
cd "$(dirname "$0")/../.."
dir=build/bench-peers
if cmp -s bench/peers/package-lock.json "$dir/package-lock.json" \
   && [ -f "$dir/node_modules/redlock/package.json" ] \
   && [ -f "$dir/node_modules/redis-semaphore/package.json" ] \
   && [ -f "$dir/node_modules/ioredis/package.json" ]; then
  exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "bench: node and npm are not installed" >&2
  exit 1
fi
mkdir -p "$dir"
cp bench/peers/package.json bench/peers/package-lock.json "$dir/"
cd "$dir"
timeout 180 npm ci --no-audit --no-fund >/dev/null
