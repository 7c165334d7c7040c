#!/bin/sh
# CI: the package as a user installs it.  `luarocks lint` of every
# rockspec; `luarocks make` of the scm rockspec into a fresh tree (built in a
# private copy of the sources, so the checkout's own build stays as it is);
# then the examples load fluxalock from that tree alone (LUA_PATH/LUA_CPATH
# point only into it) and run outside the checkout against a private
# redis-server (spec/examples_spec.lua with FLUXALOCK_EXAMPLES_TREE), and so
# does the installed fluxalock command.  Last,
# `luarocks test` of the release rockspec in that copy (spec/version_spec.lua
# only: the suite itself is make test's).
set -eu
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fluxalock-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tree=$tmp/tree
# LuaRocks sees this tree and no other: not /usr/local, not ~/.luarocks
printf 'rocks_trees = { [[%s]] }\n' "$tree" >"$tmp/config.lua"
export LUAROCKS_CONFIG="$tmp/config.lua"
lr() { luarocks --lua-version 5.4 --tree "$tree" "$@" >"$tmp/luarocks.log" 2>&1 || {
  cat "$tmp/luarocks.log"; echo "install: luarocks $* failed" >&2; exit 1; }; }

for spec in rockspecs/*.rockspec; do lr lint "$spec"; done

mkdir "$tmp/src"
tar -cf - --exclude='*.o' --exclude='*.so' .busted LICENSE README.md CHANGELOG.md \
  bin csrc lua rockspecs spec | tar -xf - -C "$tmp/src"
(cd "$tmp/src" && lr make rockspecs/fluxalock-scm-1.rockspec)
for f in LICENSE README.md CHANGELOG.md; do
  [ -f "$tree/lib/luarocks/rocks-5.4/fluxalock/scm-1/doc/$f" ] ||
    { echo "install: $f is not among the rock's documents" >&2; exit 1; }
done

FLUXALOCK_EXAMPLES_TREE=$tree lua5.4 /usr/bin/busted -o TAP spec/examples_spec.lua

# the command from the tree (the wrapper LuaRocks writes sets the tree's
# paths), outside the checkout, against a private redis-server on a Unix
# socket, stopped by its own PID
redis-server --port 0 --unixsocket "$tmp/redis.sock" --save '' --appendonly no \
  --dir "$tmp" >"$tmp/redis.log" 2>&1 &
rpid=$!
trap 'kill "$rpid" 2>/dev/null; wait "$rpid" 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
until [ -S "$tmp/redis.sock" ]; do
  i=$((i + 1)); [ "$i" -lt 200 ] || { echo "install: redis-server did not start" >&2; exit 1; }
  sleep 0.05
done
out=$(cd "$tmp" && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 \
  "$tree/bin/fluxalock" -u "unix://$tmp/redis.sock" -t 5 nightly \
  -c 'echo "ran with $FLUXALOCK_KEY fence $FLUXALOCK_FENCE"')
[ "$out" = "ran with nightly fence 1" ] ||
  { echo "install: the installed command printed '$out'" >&2; exit 1; }
"$tree/bin/fluxalock" --version | grep -q '^fluxalock [0-9]' ||
  { echo "install: the installed command has no --version" >&2; exit 1; }

# luarocks test needs busted as a rock in a tree it knows.  Debian's
# lua-busted is not a rock (and its busted script runs Lua 5.1), so register
# it in the private tree as one whose command runs Debian's busted under 5.4.
bv=$(dpkg-query -W -f '${Version}' lua-busted | sed 's/^[0-9]*://; s/[^0-9.].*//')
mkdir "$tmp/busted"
printf '%s\n' '-- Debian'"'"'s busted, under the Lua of the tree it is installed in' \
  "require 'busted.runner' ({ standalone = false })" >"$tmp/busted/busted.lua"
cat >"$tmp/busted/busted-$bv-0.rockspec" <<EOF
rockspec_format = "3.0"
package = "busted"
version = "$bv-0"
source = { url = "file:///usr/bin/busted" }
build = { type = "none", install = { bin = { busted = "busted.lua" } } }
EOF
(cd "$tmp/busted" && lr make "busted-$bv-0.rockspec")
release=$(ls rockspecs/fluxalock-[0-9]*-1.rockspec | sort -V | tail -n 1)
(cd "$tmp/src" && lr make "$release" &&
  luarocks --lua-version 5.4 --tree "$tree" test "$release" -- -o TAP spec/version_spec.lua)
echo "install: luarocks make, the examples and the command from the tree, luarocks test: ok"
