# fluxalock: build, test, demo, bench, lint and sanitizer targets.
# Flags come from pkg-config; override LUA_INCDIR, HIREDIS_INCDIR,
# HIREDIS_LIBDIR (or CFLAGS/LDFLAGS) for other layouts.

LUA        ?= lua5.4
PKG_CONFIG ?= pkg-config
LUA_PC     ?= lua5.4
LUA_INCDIR ?= $(shell $(PKG_CONFIG) --variable=includedir $(LUA_PC) 2>/dev/null)/lua5.4
# the directory that holds hiredis/hiredis.h
HIREDIS_INCDIR ?= /usr/include
HIREDIS_LIBDIR ?= $(shell $(PKG_CONFIG) --variable=libdir hiredis 2>/dev/null)

CC      ?= cc
OPT     ?= -O2 -g
WARN    = -std=c99 -Wall -Wextra -Werror -pedantic -Wmissing-prototypes \
          -Wstrict-prototypes -Wshadow -Wpointer-arith -Wcast-qual
CFLAGS  += $(OPT) $(WARN) -fPIC -I$(LUA_INCDIR) -I$(HIREDIS_INCDIR)
LDFLAGS += -shared -L$(HIREDIS_LIBDIR)
LIBS    = -lhiredis -lssl -lcrypto

SRC = csrc/core.c csrc/lpool.c csrc/llock.c csrc/stats.c csrc/fan.c csrc/group.c \
      csrc/kind_single.c csrc/kind_redlock.c csrc/kind_cluster.c csrc/kind_sentinel.c csrc/sentinel.c \
      csrc/drive.c csrc/server.c csrc/wake.c csrc/conn.c csrc/conn_io.c \
      csrc/net_tcp.c csrc/net_tls.c csrc/net_resolve.c csrc/net_lua.c \
      csrc/keys.c csrc/modes.c csrc/token.c csrc/clock.c csrc/opts.c csrc/renew.c csrc/renew_io.c
SRC += csrc/codes.c csrc/lost.c
OBJ = $(SRC:.c=.o)
LIB = fluxalock/core.so
# the process handling of the fluxalock command (bin/fluxalock): its own
# module, without hiredis
PROC = fluxalock/proc.so

.PHONY: all clean test demo bench lint deps safety

all: $(LIB) $(PROC) bin/fluxalock

$(LIB): $(SRC) csrc/fluxalock.h csrc/kind.h csrc/fan.h csrc/conn.h csrc/renew.h csrc/net.h csrc/net_int.h csrc/modes_scripts.h
	@mkdir -p fluxalock
	$(CC) $(CFLAGS) -o $@ $(SRC) $(LDFLAGS) $(LIBS)

$(PROC): csrc/proc.c
	@mkdir -p fluxalock
	$(CC) $(CFLAGS) -o $@ csrc/proc.c -shared

# the command is a Lua script kept in the tree; make only sees that it runs
bin/fluxalock: $(LIB) $(PROC)
	@chmod +x $@

clean:
	rm -rf fluxalock csrc/*.o

# the interop spec's node packages too (from npm; without node, npm or the
# registry it says so, and make test goes on: that spec then fails in one case)
deps:
	@sh tools/deps.sh
	@sh tools/node-deps.sh || echo "fluxalock: going on without them" >&2

test: deps
	@$(MAKE) --no-print-directory all
	@sh tools/test.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@sh tools/demo.sh

# bench needs two packages make test does not: it installs them itself
BENCH_PACKAGES = python3-redis gnuplot-nox

bench:
	@sh tools/deps.sh $(BENCH_PACKAGES)
	@$(MAKE) --no-print-directory all bench/out/floor bench/out/stampede_heap.so
	@sh bench/run.sh

# the fault schedule (tools/safety/run.lua; docs/reliability.md shows a run):
# worker processes, a fenced store, Redis kills, pauses, proxies, failovers
SAFETY_SEED ?= 2026
SAFETY_SECONDS ?= 600
safety: all
	@mkdir -p bench/out
	LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;tools/?.lua;;" LUA_CPATH="./?.so;;" \
	  lua5.4 tools/safety/run.lua --seed $(SAFETY_SEED) --seconds $(SAFETY_SECONDS) --workers 4 \
	  --history bench/out/safety-history.log > bench/out/safety.md; \
	  rc=$$?; cat bench/out/safety.md; exit $$rc

bench/out/floor: bench/floor.c
	@mkdir -p bench/out
	$(CC) $(OPT) $(WARN) -I$(HIREDIS_INCDIR) -o $@ bench/floor.c -L$(HIREDIS_LIBDIR) $(LIBS)

# W6/W7's live C heap figure (bench/stampede_fl.lua)
bench/out/stampede_heap.so: bench/stampede_heap.c
	@mkdir -p bench/out
	$(CC) $(CFLAGS) -o $@ bench/stampede_heap.c -shared

lint:
	luacheck lua spec examples bench bin/fluxalock tools/safety

# reliability (docs/reliability.md): the suite under sanitizers, in a private copy of the
# tree; the libFuzzer targets for FUZZ_SECONDS each (default 60)
.PHONY: check-asan check-valgrind fuzz
check-asan: deps
	@sh tools/checks/lib/sanitize.sh asan

check-valgrind: deps
	@sh tools/checks/lib/sanitize.sh valgrind

fuzz: deps
	@sh fuzz/run.sh

# examples/embed: a C program embedding Lua that drives fluxalock from its
# own poll(2) loop (docs/hosts.md); spec/host_embed_spec.lua runs it
LUA_LIBS ?= $(shell $(PKG_CONFIG) --libs $(LUA_PC) 2>/dev/null || echo -llua5.4)
EMBED = examples/embed/embed

.PHONY: examples
examples: $(LIB) $(EMBED)

$(EMBED): examples/embed/embed.c
	$(CC) $(OPT) $(WARN) -I$(LUA_INCDIR) -o $@ examples/embed/embed.c $(LUA_LIBS)

# every example, and the processes it starts, under valgrind --leak-check=full
.PHONY: valgrind-examples check-hiredis1
valgrind-examples:
	@sh tools/deps.sh valgrind
	@$(MAKE) --no-print-directory all
	@sh tools/valgrind-examples.sh

# the core against hiredis 1.x: make check-hiredis1 HIREDIS1_DIR=<a built
# hiredis 1.x source tree> (skipped without it; HIREDIS1_TEST=1 also runs
# the specs against that build)
check-hiredis1:
	@HIREDIS1_DIR="$(HIREDIS1_DIR)" HIREDIS1_TEST="$(HIREDIS1_TEST)" sh tools/hiredis1.sh
