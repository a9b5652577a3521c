/*
 * core.c: the Lua module caracal.core, and caracal_openlibs, which puts
 * Caracal into a lua_State that an embedding host owns.
 *
 * The same object files make the host binary, libcaracal and the Lua C
 * module build/caracal/core.so, so stock lua5.4 and busted run exactly the
 * code the host runs.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

const char CARACAL_REG_JSON = 0;
const char CARACAL_REG_OPTIONS = 0;

#ifndef CARACAL_LUA_DIR
#define CARACAL_LUA_DIR "/usr/local/share/caracal/lua"
#endif
#ifndef CARACAL_MIGRATIONS_DIR
#define CARACAL_MIGRATIONS_DIR "/usr/local/share/caracal/migrations"
#endif

/* core.redact(message, password) -> message with secrets as *** */
static int core_redact(lua_State *L) {
  size_t len;
  const char *msg = luaL_checklstring(L, 1, &len);
  const char *pw = luaL_optstring(L, 2, NULL);
  luaL_Buffer b;
  /* Redaction only ever shortens or keeps length, except "***" replacing a
   * 1- or 2-character secret; 3x is a safe upper bound. */
  size_t cap = len * 3 + 16;
  char *out = luaL_buffinitsize(L, &b, cap);
  size_t n = caracal_redact(msg, pw, out, cap);
  luaL_pushresultsize(&b, n);
  return 1;
}

/* core.parse_url(url) -> { keyword = value, ... } (libpq keywords) */
static int core_parse_url(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  UrlParam *params = NULL;
  int n = 0;
  char err[512];
  if (url_parse(url, &params, &n, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, params[i].value);
    lua_setfield(L, -2, params[i].key);
  }
  url_free(params, n);
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"redact", core_redact},
  {"parse_url", core_parse_url},
  {NULL, NULL}
};

/* The module table: every C-level type and function of Caracal. */
int luaopen_caracal_core(lua_State *L);
int luaopen_caracal_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  lua_pushliteral(L, CARACAL_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, CARACAL_MAX_PARAMS);
  lua_setfield(L, -2, "max_params");
  lua_pushliteral(L, CARACAL_LUA_DIR);
  lua_setfield(L, -2, "lua_dir");
  lua_pushliteral(L, CARACAL_MIGRATIONS_DIR);
  lua_setfield(L, -2, "migrations_dir");
  err_open(L);
  json_open(L);
  dec_open(L);
  inst_open(L);
  uuid_open(L);
  crypto_open(L);
  lpool_open(L);
  lconn_open(L);
  lbulk_open(L); /* execute_pipeline, copy_in (lbulk.c) */
  async_open(L); /* spawn, poll, listen, ... (async.c) */
  return 1;
}

/* Prepend dir/?.lua;dir/?/init.lua to package.path. */
static void add_lua_path(lua_State *L, const char *dir) {
  lua_getglobal(L, "package");              /* package */
  lua_getfield(L, -1, "path");              /* package path */
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");              /* package path */
  lua_pop(L, 2);
}

int caracal_openlibs(lua_State *L, const caracal_Options *options) {
  caracal_Options *opts = lua_newuserdatauv(L, sizeof *opts, 0);
  if (options) *opts = *options;
  else memset(opts, 0, sizeof *opts);
  if (opts->pool) caracal_pool_retain(opts->pool);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CARACAL_REG_OPTIONS);

  add_lua_path(L, opts->lua_dir ? opts->lua_dir : CARACAL_LUA_DIR);

  luaL_requiref(L, "caracal.core", luaopen_caracal_core, 0); /* core */
  if (opts->migrations_dir) {
    lua_pushstring(L, opts->migrations_dir);
    lua_setfield(L, -2, "migrations_dir");
  }
  if (opts->pool) {
    lpool_push(L, opts->pool);
    lua_setfield(L, -2, "shared_pool");
  }
  lua_pop(L, 1);

  /* The global `caracal` is the Lua layer (lua/caracal/init.lua). */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "caracal");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return -1; /* message on the stack */
  lua_setglobal(L, "caracal");
  return 0;
}

void caracal_close(lua_State *L) {
  /* First what may be in flight: cancel it and give every connection the
   * state holds back, rolled back, before any Lua code runs again. */
  async_close(L);
  /* Close the manager the Lua layer opened, if any: sessions give their
   * connections back and the pool is closed when this state owns it. */
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "caracal.db") == LUA_TTABLE &&
      lua_getfield(L, -1, "close_connection_manager") == LUA_TFUNCTION)
    lua_pcall(L, 0, 0, 0); /* a failure leaves its message: dropped below */
  lua_settop(L, top);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CARACAL_REG_OPTIONS) == LUA_TUSERDATA) {
    caracal_Options *opts = lua_touserdata(L, -1);
    if (opts->pool) {
      caracal_pool_release(opts->pool);
      opts->pool = NULL;
    }
  }
  lua_pop(L, 1);
}
