/*
 * lpool.c: the pool as a Lua object ("caracal.Pool").
 *
 *   local pool = core.Pool{ conninfo = {host=..., dbname=...}, pool_size = 10, ... }
 *   local conn = pool:checkout("script.lua:12")
 *   pool:status(), pool:health_check(), pool:close()
 *
 * The handle holds one reference to a caracal_Pool; several states (and
 * threads) may hold handles to the same pool.
 */
#include <string.h>

#include "internal.h"

typedef struct LPool {
  caracal_Pool *pool;
} LPool;

static LPool *check_pool(lua_State *L, int idx) {
  LPool *p = luaL_checkudata(L, idx, CARACAL_POOL_MT);
  if (!p->pool) luaL_error(L, "attempt to use a released pool");
  return p;
}

void lpool_push(lua_State *L, caracal_Pool *pool) {
  LPool *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->pool = NULL; /* created closed, then acquired */
  luaL_setmetatable(L, CARACAL_POOL_MT);
  p->pool = caracal_pool_retain(pool);
}

caracal_Pool *lpool_get(lua_State *L, int idx) { return check_pool(L, idx)->pool; }

/* Read an optional number field; raise a precise error when mistyped. */
static double opt_number(lua_State *L, int t, const char *key, double def) {
  double v = def;
  int ty = lua_getfield(L, t, key);
  if (ty == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else if (ty != LUA_TNIL)
    luaL_error(L, "%s must be a number, got %s", key, luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

static int opt_integer(lua_State *L, int t, const char *key, int def, const char *what) {
  int v = def;
  int ty = lua_getfield(L, t, key);
  if (ty != LUA_TNIL) {
    if (!lua_isinteger(L, -1)) {
      luaL_error(L, "%s must be %s, got %s", key, what, lua_tostring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
    }
    lua_Integer i = lua_tointeger(L, -1);
    if (i < -1 || i > 100000) luaL_error(L, "%s must be %s, got %I", key, what, (LUAI_UACINT)i);
    v = (int)i;
  }
  lua_pop(L, 1);
  return v;
}

/* Host log hook for pools made from Lua: the options' logger, if any. */
static caracal_Options *state_options(lua_State *L) {
  caracal_Options *o = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CARACAL_REG_OPTIONS) == LUA_TUSERDATA) o = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return o;
}

/* core.Pool(config) -> pool. Raises on invalid configuration. */
static int pool_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.pool_size = opt_integer(L, 1, "pool_size", cfg.pool_size, "an integer >= 1");
  cfg.max_overflow = opt_integer(L, 1, "max_overflow", cfg.max_overflow, "an integer >= 0 (or -1 for no limit)");
  cfg.pool_timeout = opt_number(L, 1, "pool_timeout", cfg.pool_timeout);
  cfg.pool_recycle = opt_number(L, 1, "pool_recycle", cfg.pool_recycle);
  cfg.recycle_jitter = opt_number(L, 1, "recycle_jitter", cfg.recycle_jitter);
  lua_getfield(L, 1, "pre_ping");
  cfg.pre_ping = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "reset_on_return");
  const char *reset = luaL_optstring(L, -1, "auto");
  if (strcmp(reset, "auto") == 0) cfg.reset_on_return = CARACAL_RESET_AUTO;
  else if (strcmp(reset, "always") == 0) cfg.reset_on_return = CARACAL_RESET_ALWAYS;
  else if (strcmp(reset, "none") == 0) cfg.reset_on_return = CARACAL_RESET_NONE;
  else return luaL_error(L, "reset_on_return must be 'auto', 'always' or 'none', got '%s'", reset);
  lua_pop(L, 1);

  /* conninfo table -> two NULL-terminated arrays (strings anchored in a
   * scratch table on the stack until the pool has copied them). */
  lua_getfield(L, 1, "conninfo");
  if (!lua_isnil(L, -1)) luaL_checktype(L, -1, LUA_TTABLE);
  else {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  int ci = lua_gettop(L);
  lua_newtable(L); /* key -> value as text; anchors the strings */
  int strs = lua_gettop(L);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, ci)) {                 /* key value */
    if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "conninfo keys must be strings");
    luaL_tolstring(L, -1, NULL);            /* key value text */
    lua_pushvalue(L, -3);                   /* key value text key */
    lua_insert(L, -2);                      /* key value key text */
    lua_rawset(L, strs);                    /* key value */
    lua_pop(L, 1);                          /* key */
    n++;
  }
  const char **kw = lua_newuserdatauv(L, sizeof(char *) * (size_t)(2 * n + 2), 0);
  const char **vals = kw + n + 1;
  int i = 0;
  lua_pushnil(L);
  while (lua_next(L, strs)) {
    kw[i] = lua_tostring(L, -2);
    vals[i] = lua_tostring(L, -1);
    i++;
    lua_pop(L, 1);
  }
  kw[n] = vals[n] = NULL;
  cfg.keywords = kw;
  cfg.values = vals;
  caracal_Options *o = state_options(L);
  if (o) {
    cfg.log = o->log;
    cfg.log_ud = o->log_ud;
  }

  char err[512];
  caracal_Pool *pool;
  if (caracal_pool_new(&cfg, &pool, err, sizeof err) != CARACAL_OK) return luaL_error(L, "%s", err);
  LPool *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->pool = pool; /* the new pool's own reference */
  luaL_setmetatable(L, CARACAL_POOL_MT);
  return 1;
}

static int pool_checkout_k(lua_State *L, int status, lua_KContext ctx);

/* pool:checkout([holder]) -> connection; raises a caracal.Error with
 * kind "pool_timeout", "connect" or "closed" when it cannot. In a task
 * in non-blocking mode (async.c) waiting for a connection yields to
 * caracal_poll instead of blocking the thread; pool_timeout still holds. */
static int pool_checkout(lua_State *L) {
  check_pool(L, 1);
  luaL_optstring(L, 2, NULL);
  lua_settop(L, 2);
  if (lua_isnil(L, 2)) {
    luaL_where(L, 1);
    lua_replace(L, 2);
  }
  lua_pushnumber(L, async_now()); /* holder started: when the wait began */
  return pool_checkout_k(L, LUA_OK, 0);
}

static int pool_checkout_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(status);
  CARACAL_UNUSED(ctx);
  LPool *p = check_pool(L, 1);
  const char *holder = lua_tostring(L, 2);
  caracal_Conn *conn;
  char err[1024];
  int rc;
  if (async_can_yield(L)) {
    double waited = async_now() - lua_tonumber(L, 3);
    rc = caracal_pool_try_checkout(p->pool, holder, waited, &conn, err, sizeof err);
    if (rc == CARACAL_EAGAIN) return async_yield_pool(L, p->pool, 0, pool_checkout_k);
  } else {
    rc = caracal_pool_checkout(p->pool, holder, &conn, err, sizeof err);
  }
  if (rc != CARACAL_OK) {
    err_push_simple(L, rc == CARACAL_ECONNECT ? "08001" : NULL, err);
    lua_pushstring(L, rc == CARACAL_ETIMEOUT ? "pool_timeout" : rc == CARACAL_ECONNECT ? "connect" : "closed");
    lua_setfield(L, -2, "kind");
    return lua_error(L);
  }
  lconn_push(L, conn, 1);
  return 1;
}

/* pool:prewarm(n) -> connections opened. Opens up to n (at most
 * pool_size) now, so later checkouts, which may run in a tick loop, do
 * not stall on libpq's synchronous connect. */
static int pool_prewarm(lua_State *L) {
  LPool *p = check_pool(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  char err[1024];
  int rc = caracal_pool_prewarm(p->pool, n > 100000 ? 100000 : (int)n, err, sizeof err);
  if (rc < 0) {
    err_push_simple(L, rc == CARACAL_ECONNECT ? "08001" : NULL, err);
    lua_pushstring(L, rc == CARACAL_ECONNECT ? "connect" : "closed");
    lua_setfield(L, -2, "kind");
    return lua_error(L);
  }
  lua_pushinteger(L, rc);
  return 1;
}

static int pool_status(lua_State *L) {
  LPool *p = check_pool(L, 1);
  caracal_PoolStatus st;
  caracal_pool_status(p->pool, &st);
  lua_createtable(L, 0, 12);
#define SETI(name) (lua_pushinteger(L, (lua_Integer)st.name), lua_setfield(L, -2, #name))
  SETI(size);
  SETI(checked_in);
  SETI(checked_out);
  SETI(overflow);
  SETI(total);
  SETI(connecting);
  SETI(max_overflow);
  SETI(waiting);
  SETI(connects);
  SETI(discards);
  SETI(timeouts);
  SETI(recycles);
#undef SETI
  return 1;
}

static int pool_health_check(lua_State *L) {
  LPool *p = luaL_checkudata(L, 1, CARACAL_POOL_MT);
  lua_pushboolean(L, p->pool && caracal_pool_health_check(p->pool));
  return 1;
}

static int pool_close(lua_State *L) {
  LPool *p = luaL_checkudata(L, 1, CARACAL_POOL_MT);
  if (p->pool) caracal_pool_close(p->pool);
  return 0;
}

static int pool_invalidate_all(lua_State *L) {
  caracal_pool_invalidate_all(check_pool(L, 1)->pool);
  return 0;
}

/* __gc: drop this handle's reference (the pool lives on while others
 * hold it; connections checked out keep their own reference). */
static int pool_gc(lua_State *L) {
  LPool *p = luaL_checkudata(L, 1, CARACAL_POOL_MT);
  if (p->pool) {
    caracal_pool_release(p->pool);
    p->pool = NULL;
  }
  return 0;
}

static int pool_tostring(lua_State *L) {
  LPool *p = luaL_checkudata(L, 1, CARACAL_POOL_MT);
  if (!p->pool) {
    lua_pushliteral(L, "caracal.Pool (released)");
    return 1;
  }
  caracal_PoolStatus st;
  caracal_pool_status(p->pool, &st);
  lua_pushfstring(L, "caracal.Pool (size %d, overflow %d/%d, checked out %d)", st.size,
                  st.overflow, st.max_overflow, st.checked_out);
  return 1;
}

static const luaL_Reg pool_methods[] = {
  {"checkout", pool_checkout},
  {"prewarm", pool_prewarm},
  {"status", pool_status},
  {"health_check", pool_health_check},
  {"close", pool_close},
  {"invalidate_all", pool_invalidate_all},
  {NULL, NULL}
};

void lpool_open(lua_State *L) {
  luaL_newmetatable(L, CARACAL_POOL_MT);
  luaL_newlib(L, pool_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, pool_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, pool_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, pool_new);
  lua_setfield(L, -2, "Pool");
}
