/*
 * test_startup.c: the seed's startup schema check from C
 * (caracal_check_schema_version) on an empty and on a migrated database.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "caracal.h"
#include "tap.h"

static lua_State *L;

static int lua_do(const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    printf("# lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

TEST(outdated_then_current) {
  char err[512];
  CHECK(lua_do("testdb = require 'testdb'\n"
               "fresh = testdb.fresh_database('cstart')\n"
               "require('caracal.db').initialize_connection_manager({url = fresh.url})"),
        "a fresh database");
  int rc = caracal_check_schema_version(L, err, sizeof err);
  CHECK(rc == CARACAL_ESCHEMA, "empty database: %d (%s)", rc, err);
  CHECK(strstr(err, "Database schema is outdated!") != NULL, "message: %s", err);
  CHECK(strstr(err, "Pending migrations: 3") != NULL, "message: %s", err);
  CHECK(strstr(err, "run 'caracal db upgrade head'") != NULL, "message: %s", err);
  CHECK(lua_do("require('caracal.migrate').upgrade(require('caracal.db').get_connection_manager(), 'head')"),
        "upgrade head");
  rc = caracal_check_schema_version(L, err, sizeof err);
  CHECK(rc == CARACAL_OK, "at head: %d (%s)", rc, err);
  CHECK(err[0] == '\0', "no message at head: %s", err);
  CHECK(lua_do("require('caracal.db').close_connection_manager() fresh.drop()"), "cleanup");
}

TEST(unreachable_is_not_a_schema_verdict) {
  char err[512];
  CHECK(lua_do("require('caracal.db').initialize_connection_manager({host = '127.0.0.1', port = 1, "
               "connect_timeout = 2, password = 'n0t-Sh0wn'})"), "manager");
  int rc = caracal_check_schema_version(L, err, sizeof err);
  CHECK(rc == CARACAL_ELUA, "unreachable: %d (%s)", rc, err);
  CHECK(strstr(err, "n0t-Sh0wn") == NULL, "no password in: %s", err);
  lua_do("require('caracal.db').close_connection_manager()");
}

int main(void) {
  if (!getenv("CARACAL_TEST_URL")) {
    printf("1..0 # SKIP CARACAL_TEST_URL not set (run through spec/run.sh)\n");
    return 0;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  if (caracal_openlibs(L, NULL) != 0) {
    printf("Bail out! caracal_openlibs: %s\n", lua_tostring(L, -1));
    return 1;
  }
  /* The spec helpers (testdb) live beside the specs. */
  lua_do("package.path = (os.getenv('CARACAL_ROOT') or '.') .. '/spec/support/?.lua;' .. package.path");
  RUN(outdated_then_current, "startup check from C: outdated on an empty database, OK at head");
  RUN(unreachable_is_not_a_schema_verdict, "startup check from C: an unreachable database is an error, not a verdict");
  caracal_close(L);
  lua_close(L);
  return tap_done();
}
