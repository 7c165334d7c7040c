#!/bin/sh
# CI: cppcheck (warning, performance, portability) over the C core and the
# fuzz harnesses; any finding fails.  Style findings are not enforced.
cd "$(dirname "$0")/../.." || exit 1
cppcheck --enable=warning,performance,portability --std=c99 --error-exitcode=1 \
  --inline-suppr --quiet -I csrc --suppress=missingIncludeSystem \
  -DCONFIG_LUA='"config.lua"' csrc fuzz/config_fuzz.c fuzz/reply_fuzz.c
