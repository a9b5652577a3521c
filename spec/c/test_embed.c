/*
 * test_embed.c: Caracal opened into states a host owns.
 *
 * A state made with lua_newstate and a counting allocator: everything
 * Caracal allocates on the Lua side is counted and gone after
 * caracal_close + lua_close. The host's logger receives messages with the
 * password redacted. Errors come back to the host; nothing exits.
 * Needs CARACAL_TEST_HOST and CARACAL_TEST_PORT for the database parts.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "caracal.h"
#include "tap.h"

static const char *host, *port;

typedef struct Counter {
  size_t in_use, peak;
  long allocs;
} Counter;

/* lua_Alloc that keeps count; ptr == NULL means osize is a type tag. */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  Counter *c = ud;
  if (nsize == 0) {
    if (ptr) c->in_use -= osize;
    free(ptr);
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  c->in_use += nsize - (ptr ? osize : 0);
  if (!ptr) c->allocs++;
  if (c->in_use > c->peak) c->peak = c->in_use;
  return p;
}

typedef struct Log {
  int count, warnings;
  char last[1024];
} Log;

static void logger(void *ud, int level, const char *msg) {
  Log *log = ud;
  log->count++;
  if (level == CARACAL_LOG_WARN) log->warnings++;
  snprintf(log->last, sizeof log->last, "%s", msg);
}

static bool run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    printf("# lua: %s\n", luaL_tolstring(L, -1, NULL));
    lua_settop(L, 0);
    return false;
  }
  lua_settop(L, 0);
  return true;
}

/* A chunk that defines `conninfo` for the test cluster. */
static void set_conninfo(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, host);
  lua_setfield(L, -2, "host");
  lua_pushstring(L, port);
  lua_setfield(L, -2, "port");
  lua_pushliteral(L, "caracal");
  lua_setfield(L, -2, "dbname");
  lua_pushliteral(L, "caracal");
  lua_setfield(L, -2, "user");
  lua_setglobal(L, "conninfo");
}

TEST(custom_allocator_state_frees_everything) {
  Counter c = {0, 0, 0};
  lua_State *L = lua_newstate(counting_alloc, &c);
  luaL_openlibs(L);
  size_t before = c.in_use;
  Log log = {0, 0, ""};
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.log = logger;
  o.log_ud = &log;
  o.nonblocking = 1;
  CHECK(caracal_openlibs(L, &o) == 0, "openlibs: %s", lua_tostring(L, -1));
  CHECK(c.in_use > before, "Caracal's modules were allocated through the host's allocator");
  set_conninfo(L);
  CHECK(run(L, "local core = require 'caracal.core'\n"
               "local pool = core.Pool{ conninfo = conninfo, pool_size = 2, max_overflow = 0 }\n"
               "assert(pool:prewarm(2) == 2)\n"
               "manager = caracal.initialize_connection_manager({ url = 'postgresql://' ..\n"
               "  conninfo.user .. '@' .. conninfo.host .. ':' .. conninfo.port .. '/' .. conninfo.dbname })\n"
               "local rows = manager:execute('select $1::numeric * 2 as v, now() as t', caracal.Decimal('1.25'))\n"
               "assert(tostring(rows[1].v) == '2.50', tostring(rows[1].v))\n"
               "pool:close()\n"
               "core.spawn(function()\n"
               "  local r = manager:execute('select pg_sleep(0.05), 7 as n')\n"
               "  answer = r[1].n\n"
               "end)"),
        "queries through a counted state");
  int left;
  while ((left = caracal_poll(L, -1)) > 0) {}
  CHECK(left == 0, "poll drained: %d", left);
  lua_getglobal(L, "answer");
  CHECK(lua_tointeger(L, -1) == 7, "the task ran in the counted state");
  lua_pop(L, 1);
  /* Something left in flight at shutdown, and a handle nobody closed. */
  CHECK(run(L, "held = manager:session(); held:execute('select 1')\n"
               "require('caracal.core').spawn(function() manager:execute('select pg_sleep(5)') end)"),
        "in flight");
  caracal_close(L);
  lua_close(L);
  CHECK(c.in_use == 0, "every byte freed: %zu left", c.in_use);
  CHECK(c.allocs > 100, "counted %ld allocations", c.allocs);
}

TEST(logger_receives_redacted_messages) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  Log log = {0, 0, ""};
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.log = logger;
  o.log_ud = &log;
  CHECK(caracal_openlibs(L, &o) == 0, "openlibs");
  set_conninfo(L);
  /* The password is part of the database name, so the server's refusal
   * repeats it: the message the host sees must not. */
  CHECK(run(L, "local core = require 'caracal.core'\n"
               "conninfo.dbname = 'nodb_Sup3rS3cret'\n"
               "conninfo.password = 'Sup3rS3cret'\n"
               "local pool = core.Pool{ conninfo = conninfo, pool_size = 1, max_overflow = 0 }\n"
               "local ok, err = pcall(pool.checkout, pool)\n"
               "assert(not ok and err.kind == 'connect', tostring(err))\n"
               "assert(not tostring(err):find('Sup3rS3cret'), tostring(err))\n"
               "pool:close()"),
        "failed connect");
  CHECK(log.warnings == 1, "one warning logged: %d", log.warnings);
  CHECK(strstr(log.last, "nodb_***") != NULL, "redacted: %s", log.last);
  CHECK(strstr(log.last, "Sup3rS3cret") == NULL, "no password in: %s", log.last);
  caracal_close(L);
  lua_close(L);
}

TEST(states_share_nothing_but_the_pool) {
  const char *kw[] = {"host", "port", "dbname", "user", NULL};
  const char *vals[] = {host, port, "caracal", "caracal", NULL};
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = 2;
  caracal_Pool *pool;
  char err[256];
  CHECK(caracal_pool_new(&cfg, &pool, err, sizeof err) == CARACAL_OK, "pool");
  lua_State *a = luaL_newstate(), *b = luaL_newstate();
  luaL_openlibs(a);
  luaL_openlibs(b);
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.pool = pool;
  o.nonblocking = 1;
  CHECK(caracal_openlibs(a, &o) == 0, "a");
  o.nonblocking = 0;
  CHECK(caracal_openlibs(b, &o) == 0, "b");
  caracal_pool_release(pool); /* the states hold their own references */
  CHECK(run(a, "assert(require('caracal.core').is_nonblocking() == true)"), "a is non-blocking");
  CHECK(run(b, "assert(require('caracal.core').is_nonblocking() == false)"), "b blocks");
  const char *use = "local m = caracal.initialize_connection_manager()\n"
                    "assert(m:execute('select 5 as n')[1].n == 5)";
  CHECK(run(a, use) && run(b, use), "both use the shared pool");
  caracal_close(a);
  lua_close(a);
  CHECK(run(b, use), "b still works after a closed");
  lua_pushcfunction(b, luaopen_base); /* any function */
  CHECK(caracal_spawn(b, 0) == 0, "b spawns");
  caracal_close(b);
  lua_pushcfunction(b, luaopen_base);
  CHECK(caracal_spawn(b, 0) == CARACAL_ECLOSED, "no tasks after caracal_close");
  CHECK(caracal_poll(b, 0) == CARACAL_ECLOSED, "no poll after caracal_close");
  CHECK(lua_gettop(b) == 0, "stack balanced: %d", lua_gettop(b));
  lua_close(b); /* the last reference: the pool is freed here */
}

TEST(missing_lua_layer_is_an_error_not_an_exit) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.lua_dir = "/nonexistent/caracal-lua";
  int rc = caracal_openlibs(L, &o);
  CHECK(rc == -1, "fails: %d", rc);
  const char *msg = lua_tostring(L, -1);
  CHECK(msg && strstr(msg, "module 'caracal") != NULL, "message on the stack: %s", msg ? msg : "(none)");
  caracal_close(L);
  lua_close(L);
}

int main(void) {
  host = getenv("CARACAL_TEST_HOST");
  port = getenv("CARACAL_TEST_PORT");
  RUN(missing_lua_layer_is_an_error_not_an_exit, "embed: a missing Lua layer is an error on the stack, not exit()");
  if (!host || !port) {
    printf("ok 2 # SKIP CARACAL_TEST_HOST/PORT not set (run through spec/run.sh)\n");
    printf("1..2\n");
    return 0;
  }
  RUN(custom_allocator_state_frees_everything, "embed: lua_newstate with a counting allocator: queries and tasks, then every byte freed");
  RUN(logger_receives_redacted_messages, "embed: the host logger receives messages with the password redacted");
  RUN(states_share_nothing_but_the_pool, "embed: two states share only the pool; closing one leaves the other working");
  return tap_done();
}
