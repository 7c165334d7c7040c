#!/bin/sh
# make check-hiredis1 HIREDIS1_DIR=<dir>: build the C core against hiredis
# 1.x with the Makefile's strict flags, and load it.  <dir> is a built
# hiredis 1.x source tree (hiredis.h and libhiredis.so side by side, as
# "make" in an unpacked release leaves them).  Debian 12 ships hiredis 0.14,
# so CI cannot run this; without HIREDIS1_DIR it says so and succeeds.
# HIREDIS1_TEST=1 also runs the busted suite against that build, in a copy
# of the checkout under build/ (the checkout's own core.so is untouched).
set -eu
cd "$(dirname "$0")/.."
if [ -z "${HIREDIS1_DIR:-}" ]; then
  echo "check-hiredis1: skipped (give HIREDIS1_DIR=<built hiredis 1.x source tree>)"
  exit 0
fi
src=$(cd "$HIREDIS1_DIR" && pwd)
if [ ! -f "$src/hiredis.h" ] || [ ! -f "$src/libhiredis.so" ]; then
  echo "check-hiredis1: $src has no hiredis.h and libhiredis.so (run make there)" >&2
  exit 1
fi
major=$(sed -n 's/^#define HIREDIS_MAJOR \([0-9]*\).*/\1/p' "$src/hiredis.h")
[ "${major:-0}" -ge 1 ] || { echo "check-hiredis1: $src is hiredis $major.x, not 1.x" >&2; exit 1; }

out=$(pwd)/build/hiredis1
rm -rf "$out"
mkdir -p "$out/include" "$out/lib" "$out/fluxalock"
ln -s "$src" "$out/include/hiredis" # we include <hiredis/hiredis.h>
# the library under the name the linker looks for and the one it records
soname=$(objdump -p "$src/libhiredis.so" | awk '$1 == "SONAME" { print $2 }')
ln -s "$src/libhiredis.so" "$out/lib/libhiredis.so"
[ -n "$soname" ] && ln -s "$src/libhiredis.so" "$out/lib/$soname"

make --no-print-directory LIB="$out/fluxalock/core.so" \
  HIREDIS_INCDIR="$out/include" HIREDIS_LIBDIR="$out/lib"
LD_LIBRARY_PATH="$out/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
${LUA:-lua5.4} -e "package.cpath = '$out/?.so'
  local core = require 'fluxalock.core'
  assert(core.hiredis_major >= 1, 'loaded a core built on hiredis ' .. core.hiredis_major)
  print('check-hiredis1: fluxalock.core ' .. core.version .. ' built and loaded on hiredis ' .. core.hiredis_major .. '.x')"

if [ -n "${HIREDIS1_TEST:-}" ]; then
  tree="$out/tree"
  mkdir -p "$tree/fluxalock"
  git ls-files -co --exclude-standard | while read -r f; do
    mkdir -p "$tree/$(dirname "$f")"
    cp -p "$f" "$tree/$f"
  done
  cp "$out/fluxalock/core.so" "$tree/fluxalock/core.so"
  # the fluxalock command's process module (no hiredis in it): as built here
  make --no-print-directory fluxalock/proc.so >/dev/null
  cp fluxalock/proc.so "$tree/fluxalock/proc.so"
  cd "$tree"
  FLUXALOCK_SKIP_CHECKS=1 sh tools/test.sh
fi
