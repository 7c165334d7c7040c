-- The 0.2.0 release.  It differs from fluxalock-scm-1.rockspec only in its
-- version and source (spec/version_spec.lua checks that).
-- luarocks --lua-version 5.4 make rockspecs/fluxalock-0.2.0-1.rockspec
-- builds fluxalock.core from csrc/ against the system's hiredis (0.14 or
-- 1.x) and installs the pure-Lua modules.  Another hiredis:
--   luarocks make rockspecs/fluxalock-0.2.0-1.rockspec \
--     HIREDIS_INCDIR=/opt/hiredis/include HIREDIS_LIBDIR=/opt/hiredis/lib
-- (HIREDIS_INCDIR is the directory that holds hiredis/hiredis.h).
-- The builtin backend takes its compiler flags from luarocks' CFLAGS (the
-- rockspec cannot add any); to build as strictly as the Makefile does:
--   luarocks make rockspecs/fluxalock-0.2.0-1.rockspec CFLAGS="-O2 -fPIC -std=c99"
rockspec_format = "3.0"
package = "fluxalock"
version = "0.2.0-1"

source = {
  -- a placeholder: no published repository exists yet.  luarocks make
  -- builds the checkout it is run in and never fetches; luarocks install
  -- or build of this rockspec needs the real repository's URL here first
  url = "git+https://example.invalid/fluxalock.git",
  tag = "v0.2.0",
}

description = {
  summary = "A distributed lock for Lua 5.4, backed by Redis",
  detailed = [[
    Locks across processes and machines through Redis (one server,
    Sentinel, Cluster, or a Redlock quorum of masters): obtain
    with a ttl and an optional wait (woken by the release, with a linear
    backoff as a safety net), release, refresh and ttl checked against a
    random per-acquisition token, fencing counters, and a lock userdata that
    a to-be-closed variable releases on every exit from its scope.  The core
    is C on hiredis and can wait through an event loop's poller.
  ]],
  -- no published home page yet: this placeholder is replaced when one exists
  homepage = "https://example.invalid/fluxalock",
  license = "MIT",
  labels = { "redis", "lock", "mutex", "distributed" },
}

dependencies = {
  "lua >= 5.4, < 5.5",
}

-- luarocks test: busted in the checkout, after a build there (make, or
-- luarocks make); .busted points busted at lua/ and ./fluxalock/core.so
test = { type = "busted" }

external_dependencies = {
  HIREDIS = {
    header = "hiredis/hiredis.h",
    library = "hiredis",
  },
}

build = {
  type = "builtin",
  modules = {
    ["fluxalock"] = "lua/fluxalock.lua",
    ["fluxalock.config"] = "lua/fluxalock/config.lua",
    ["fluxalock.host"] = "lua/fluxalock/host.lua",
    ["fluxalock.modes"] = "lua/fluxalock/modes.lua",
    ["fluxalock.sentinel"] = "lua/fluxalock/sentinel.lua",
    ["fluxalock.cluster"] = "lua/fluxalock/cluster.lua",
    ["fluxalock.redlock"] = "lua/fluxalock/redlock.lua",
    ["fluxalock.once"] = "lua/fluxalock/once.lua",
    ["fluxalock.core"] = {
      sources = {
        "csrc/core.c", "csrc/lpool.c", "csrc/llock.c", "csrc/stats.c",
        "csrc/fan.c", "csrc/group.c", "csrc/kind_single.c",
        "csrc/kind_redlock.c", "csrc/kind_cluster.c",
        "csrc/kind_sentinel.c", "csrc/sentinel.c", "csrc/drive.c", "csrc/server.c",
        "csrc/wake.c", "csrc/conn.c", "csrc/conn_io.c", "csrc/net_tcp.c",
        "csrc/net_tls.c", "csrc/net_resolve.c", "csrc/net_lua.c",
        "csrc/keys.c", "csrc/modes.c", "csrc/token.c", "csrc/clock.c", "csrc/opts.c",
        "csrc/renew.c", "csrc/renew_io.c", "csrc/codes.c", "csrc/lost.c",
      },
      libraries = { "hiredis", "ssl", "crypto" },
      incdirs = { "$(HIREDIS_INCDIR)" },
      libdirs = { "$(HIREDIS_LIBDIR)" },
      defines = { "_FILE_OFFSET_BITS=64" },
    },
    -- the fluxalock command's process handling (fork, setsid, exec, signals)
    ["fluxalock.proc"] = { sources = { "csrc/proc.c" } },
  },
  -- the command; LuaRocks wraps it in a script that sets the tree's
  -- package paths, so the installed copy finds the modules above
  install = {
    bin = { fluxalock = "bin/fluxalock" },
  },
}
