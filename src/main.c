/*
 * main.c: the caracal host. It is just another client of libcaracal: it
 * makes a lua_State, opens Caracal into it with caracal_openlibs, and hands
 * the command line to the Lua CLI (lua/caracal/cli.lua), which returns
 * the exit code. Errors that escape are printed here as one block.
 *
 * What only a terminal program needs (readline, signals: repl.c) is
 * registered here as package.loaded["caracal.host"] before the CLI loads,
 * so the library stays free of it and the CLI can ask for it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "caracal.h"

/* repl.c: the terminal functions of the host (readline, Ctrl-C). */
int luaopen_caracal_host(lua_State *L);

/* Message handler: keep structured errors as they are (their __tostring
 * prints well), add a traceback to anything else. */
static int msghandler(lua_State *L) {
  if (lua_type(L, 1) == LUA_TTABLE && luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL) {
    lua_pop(L, 1);
    return 1;
  }
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static void report(lua_State *L) {
  const char *msg = luaL_tolstring(L, -1, NULL);
  fprintf(stderr, "caracal: %s\n", msg);
  lua_pop(L, 2);
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "caracal: cannot create a Lua state (out of memory)\n");
    return 1;
  }
  luaL_openlibs(L);
  caracal_Options opts;
  memset(&opts, 0, sizeof opts);
  opts.lua_dir = getenv("CARACAL_LUA_DIR");
  opts.migrations_dir = getenv("CARACAL_MIGRATIONS_DIR");
  int status = 1;
  lua_pushcfunction(L, msghandler);
  int handler = lua_gettop(L);
  if (caracal_openlibs(L, &opts) != 0) {
    report(L);
    goto done;
  }
  luaL_requiref(L, "caracal.host", luaopen_caracal_host, 0); /* host */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "caracal.cli");
  if (lua_pcall(L, 1, 1, handler) != LUA_OK) {
    report(L);
    goto done;
  }                                         /* host cli */
  /* The CLI starts the REPL when stdin is a terminal and it has
   * M.isatty and M.repl; give it the host's unless it set its own. */
  if (lua_getfield(L, -1, "isatty") == LUA_TNIL) {
    lua_getfield(L, -3, "isatty");
    lua_setfield(L, -3, "isatty");
  }
  lua_pop(L, 1);
  if (lua_getfield(L, -1, "repl") == LUA_TNIL) {
    lua_getfield(L, -3, "repl");
    lua_setfield(L, -3, "repl");
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "main"); /* cli main */
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  if (lua_pcall(L, 1, 1, handler) != LUA_OK) {
    report(L);
    status = 1;
  } else {
    status = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  }
done:
  /* Restore signal handlers before closing: no Ctrl-C handler may run
   * against a state being torn down. */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "caracal.host") == LUA_TTABLE &&
      lua_getfield(L, -1, "close") == LUA_TFUNCTION)
    lua_pcall(L, 0, 0, 0);
  caracal_close(L);
  lua_close(L);
  return status;
}
