# Caracal: a C host embedding Lua 5.4 with a PostgreSQL data layer.
#
#   make            build/caracal, build/libcaracal.{a,so}, build/lua/caracal/core.so
#                   (the module sits under build/lua/ because build/caracal is the host)
#   make deps       install the Debian packages the project needs (no-op when present)
#   make run        deps, build, local database, migrate, quick-start example
#   make check      deps, build, every test against a throwaway cluster
#   make SANITIZE=1 ...   everything built with -fsanitize=address,undefined
#   make valgrind   the host under valgrind's leak checker
#   make bench      the benchmark suite (bench/run.sh; BENCH_EVENTS=20000)
#   make install PREFIX=/usr/local DESTDIR=   header, libraries, host, pkg-config
#                   file (caracal.pc), Lua layer and migrations

PREFIX  ?= /usr/local
DESTDIR ?=
# A sanitized build lives apart so the two never mix objects.
ifeq ($(SANITIZE),1)
  BUILD ?= build/sanitize
else
  BUILD ?= build
endif

CC      ?= cc
LUA_CFLAGS := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_LIBS   := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
PG_CFLAGS  := -I$(shell pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)

WARN    := -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -fPIC $(WARN) $(LUA_CFLAGS) $(PG_CFLAGS) -Isrc
LDLIBS  := -lpq -luuid -lcrypto -lpthread -lm

ifeq ($(SANITIZE),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
# ThreadSanitizer, for the pool tests (`make reliability` builds them in
# $(BUILD)/tsan with TSAN=1).
ifeq ($(TSAN),1)
  CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=thread
endif

# The library: every src/*.c except the host's own entry points.
HOST_SRC := src/main.c src/repl.c
LIB_SRC  := $(filter-out $(HOST_SRC),$(wildcard src/*.c))
LIB_OBJ  := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
HOST_OBJ := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(wildcard $(HOST_SRC)))
HEADERS  := $(wildcard src/*.h)

C_TESTS  := $(patsubst spec/c/%.c,$(BUILD)/tests/%,$(wildcard spec/c/test_*.c))
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

.PHONY: all deps run check test valgrind clean install bench

all: $(BUILD)/caracal $(BUILD)/libcaracal.a $(BUILD)/libcaracal.so $(BUILD)/lua/caracal/core.so \
     $(C_TESTS) $(EXAMPLES)

# Where the library finds its Lua layer and migrations when the host does
# not say (caracal_Options): the source tree, or the install tree for the
# objects `make install` builds.
BUILTIN_LUA_DIR        ?= $(abspath lua)
BUILTIN_MIGRATIONS_DIR ?= $(abspath migrations)

$(BUILD)/obj/%.o: src/%.c $(HEADERS) | $(BUILD)/obj
	$(CC) $(CFLAGS) -DCARACAL_LUA_DIR='"$(BUILTIN_LUA_DIR)"' -DCARACAL_MIGRATIONS_DIR='"$(BUILTIN_MIGRATIONS_DIR)"' -c -o $@ $<

$(BUILD)/obj $(BUILD)/lua/caracal $(BUILD)/tests $(BUILD)/examples:
	mkdir -p $@

$(BUILD)/libcaracal.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libcaracal.so: $(LIB_OBJ)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LUA_LIBS) $(LDLIBS)

# The same core as a Lua C module for stock lua5.4 and busted. Lua symbols
# come from the interpreter that loads it, so liblua is not linked in.
$(BUILD)/lua/caracal/core.so: $(LIB_OBJ) | $(BUILD)/lua/caracal
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/caracal: $(HOST_OBJ) $(BUILD)/libcaracal.a
	$(CC) $(LDFLAGS) -o $@ $(HOST_OBJ) $(BUILD)/libcaracal.a $(LUA_LIBS) -lreadline $(LDLIBS)

$(BUILD)/tests/%: spec/c/%.c spec/c/tap.h spec/c/testpool.h $(BUILD)/libcaracal.a | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcaracal.a $(LUA_LIBS) $(LDLIBS)

$(BUILD)/examples/%: examples/%.c $(BUILD)/libcaracal.a | $(BUILD)/examples
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcaracal.a $(LUA_LIBS) $(LDLIBS)

deps:
	@sh .ci/deps.sh

run: deps all
	@sh examples/run.sh

check test: deps all
	@BUILD=$(BUILD) SANITIZE=$(SANITIZE) bash spec/run.sh

valgrind: deps all
	@BUILD=$(BUILD) VALGRIND=1 bash spec/run.sh c host

clean:
	rm -rf $(BUILD)

# ---- bench: the same work through libpq, Caracal and the peers ----------
$(BUILD)/bench/libpq_floor: bench/libpq_floor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -lpq

$(BUILD)/bench/host_bench: bench/host_bench.c $(BUILD)/libcaracal.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcaracal.a $(LUA_LIBS) $(LDLIBS)

bench: deps all $(BUILD)/bench/libpq_floor $(BUILD)/bench/host_bench
	@BUILD=$(BUILD) bash bench/run.sh

# ---- install: `make install PREFIX=/usr/local DESTDIR=` -----------------
# The header, libcaracal.{a,so}, the host, the Lua C module, a pkg-config
# file, the Lua layer and the migrations. The library is rebuilt in
# $(BUILD)/install with the installed data paths compiled in, so an
# installed host finds its Lua layer without any option.
VERSION  := $(shell sed -n 's/^\#define CARACAL_VERSION "\(.*\)"/\1/p' src/caracal.h)
DATADIR  := $(PREFIX)/share/caracal
INST     := $(BUILD)/install

$(BUILD)/caracal.pc: caracal.pc.in src/caracal.h
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' caracal.pc.in >$@

install:
	$(MAKE) BUILD=$(INST) PREFIX=$(PREFIX) BUILTIN_LUA_DIR=$(DATADIR)/lua \
	  BUILTIN_MIGRATIONS_DIR=$(DATADIR)/migrations \
	  $(INST)/caracal $(INST)/libcaracal.a $(INST)/libcaracal.so $(INST)/lua/caracal/core.so \
	  $(INST)/caracal.pc
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4/caracal $(DESTDIR)$(DATADIR)
	install -m 755 $(INST)/caracal $(DESTDIR)$(PREFIX)/bin/caracal
	install -m 644 src/caracal.h $(DESTDIR)$(PREFIX)/include/caracal.h
	install -m 644 $(INST)/libcaracal.a $(DESTDIR)$(PREFIX)/lib/libcaracal.a
	install -m 755 $(INST)/libcaracal.so $(DESTDIR)$(PREFIX)/lib/libcaracal.so
	install -m 755 $(INST)/lua/caracal/core.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/caracal/core.so
	install -m 644 $(INST)/caracal.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/caracal.pc
	rm -rf $(DESTDIR)$(DATADIR)/lua $(DESTDIR)$(DATADIR)/migrations
	cp -R lua $(DESTDIR)$(DATADIR)/lua
	cp -R migrations $(DESTDIR)$(DATADIR)/migrations

# ---- reliability and fuzzing ------------------------------------------
#   make reliability   the long fault, bad-input and load set (a few
#                      minutes): spec/reliability, the fast fault specs,
#                      the load test plain and under ThreadSanitizer (with
#                      the pool tests), each fuzz target for
#                      RELIABILITY_FUZZ_SECONDS; ends with the report table.
#   make fuzz          every fuzz target for FUZZ_SECONDS (default 600)
# Root-only cases (network namespaces, nft, tmpfs) skip cleanly otherwise.
REL      := $(BUILD)/reliability
TSAN_BUILD ?= $(BUILD)/tsan
FUZZ_BUILD ?= $(BUILD)/fuzz
FUZZ_SECONDS ?= 600
RELIABILITY_FUZZ_SECONDS ?= 15
FUZZ_CC  ?= clang
FUZZERS  := $(patsubst spec/fuzz/%.c,$(FUZZ_BUILD)/%,$(wildcard spec/fuzz/fuzz_*.c))
FUZZ_OBJ := $(LIB_SRC:src/%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer-no-link,address,undefined \
  -fno-sanitize-recover=undefined $(LUA_CFLAGS) $(PG_CFLAGS) -Isrc

.PHONY: reliability reliability-deps reliability-build fuzz fuzz-deps fuzz-build
.SECONDARY: $(FUZZ_OBJ)

reliability-deps:
	@sh spec/reliability/deps.sh

$(REL)/proxy: spec/reliability/proxy.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -g -std=c11 -Wall -Wextra -Werror -o $@ $<

$(REL)/test_load: spec/reliability/test_load.c spec/c/tap.h spec/c/testpool.h $(BUILD)/libcaracal.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libcaracal.a $(LUA_LIBS) $(LDLIBS)

reliability-build: all $(REL)/proxy $(REL)/test_load
	$(MAKE) --no-print-directory TSAN=1 SANITIZE= BUILD=$(TSAN_BUILD) $(TSAN_BUILD)/tests/test_pool \
	  $(TSAN_BUILD)/reliability/test_load

reliability: deps reliability-deps reliability-build
	@$(MAKE) --no-print-directory fuzz-build || echo "reliability: the fuzz targets were not built (clang?): skipped"
	@BUILD=$(BUILD) TSAN_BUILD=$(TSAN_BUILD) FUZZ_BUILD=$(FUZZ_BUILD) SANITIZE=$(SANITIZE) \
	  FUZZ_SECONDS=$(RELIABILITY_FUZZ_SECONDS) bash spec/run.sh reliability

fuzz-deps:
	@command -v $(FUZZ_CC) >/dev/null 2>&1 || sh spec/reliability/deps.sh clang

$(FUZZ_BUILD)/obj/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DCARACAL_LUA_DIR='"$(abspath lua)"' \
	  -DCARACAL_MIGRATIONS_DIR='"$(abspath migrations)"' -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: spec/fuzz/fuzz_%.c spec/fuzz/fuzz_common.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -DCARACAL_LUA_DIR='"$(abspath lua)"' -o $@ $< $(FUZZ_OBJ) \
	  $(LUA_LIBS) $(LDLIBS)

fuzz-build: fuzz-deps
	@$(MAKE) --no-print-directory $(FUZZERS)

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) bash spec/fuzz/run.sh

# ---- scale: replicas and failover, PgBouncer, partitioned ledgers ------
#   make scale   spec/scale (a few minutes): a primary and a pg_basebackup
#                standby with failover under a writer, PgBouncer in
#                transaction mode (installed when missing), and revision
#                0003 on a million events.
.PHONY: scale
scale: deps all
	@sh spec/scale/deps.sh
	@BUILD=$(BUILD) bash spec/run.sh scale
