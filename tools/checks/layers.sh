#!/bin/sh
# CI: the shape of the C core (docs/internals.md): calls go down the layers
# of that page's table, never up; no circle of calls between files but the
# two one-layer pairs, no file over ~600 lines, no function over 60, no kind
# test outside the strategy files.
cd "$(dirname "$0")/../.." || exit 1
exec lua5.4 tools/checks/lib/layers.lua csrc/*.c
