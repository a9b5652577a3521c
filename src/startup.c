/*
 * startup.c: the seed's startup schema check for C hosts.
 *
 * The check itself lives in Lua (caracal.migrate.check_schema_version_
 * on_startup), next to the runner that knows the scripts; this is the C
 * door to it, so a host can refuse to start on an outdated database
 * without writing Lua.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Lua side: resolve the manager and run the check; raises on failure. */
static int run_check(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "caracal.db");
  lua_call(L, 1, 1);                                   /* db */
  lua_getfield(L, -1, "get_connection_manager");
  lua_call(L, 0, 1);                                   /* db manager|nil */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, -1, "initialize_connection_manager");
    lua_call(L, 0, 1);                                 /* db manager */
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "caracal.migrate");
  lua_call(L, 1, 1);                                   /* db manager migrate */
  lua_getfield(L, -1, "check_schema_version_on_startup");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 0);
  return 0;
}

int caracal_check_schema_version(lua_State *L, char *err, size_t errlen) {
  if (err && errlen) err[0] = '\0';
  lua_pushcfunction(L, run_check);
  if (lua_pcall(L, 0, 0, 0) == LUA_OK) return CARACAL_OK;
  const char *msg = luaL_tolstring(L, -1, NULL);      /* err msg */
  if (err && errlen) snprintf(err, errlen, "%s", msg);
  int kind = CARACAL_ELUA;
  if (lua_istable(L, -2)) {
    lua_getfield(L, -2, "kind");
    const char *k = lua_tostring(L, -1);
    if (k && strncmp(k, "schema_", 7) == 0) kind = CARACAL_ESCHEMA;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return kind;
}
