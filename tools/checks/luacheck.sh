#!/bin/sh
# CI: luacheck over every Lua file of the project (.luacheckrc): no globals,
# no unused or shadowed variables.
cd "$(dirname "$0")/../.." && luacheck --no-color -q lua spec examples bench bin/fluxalock tools/safety
