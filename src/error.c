/*
 * error.c: structured database errors (metatable "caracal.Error").
 *
 * An error is a plain table with a metatable, so scripts read its fields
 * (err.sqlstate, err.detail, ...) and `error(err)` re-raises it unchanged,
 * which is what lets scopes roll back and re-raise the original value.
 * __tostring reads like psql:
 *
 *   ERROR 23505: duplicate key value violates unique constraint "..."
 *   DETAIL: Key (name)=(a) already exists.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Fields copied from the server's error report, and their table keys. */
static const struct {
  int code;
  const char *key;
} result_fields[] = {
  {PG_DIAG_SEVERITY_NONLOCALIZED, "severity"},
  {PG_DIAG_SQLSTATE, "sqlstate"},
  {PG_DIAG_MESSAGE_PRIMARY, "message"},
  {PG_DIAG_MESSAGE_DETAIL, "detail"},
  {PG_DIAG_MESSAGE_HINT, "hint"},
  {PG_DIAG_STATEMENT_POSITION, "position"},
  {PG_DIAG_CONTEXT, "context"},
  {PG_DIAG_SCHEMA_NAME, "schema"},
  {PG_DIAG_TABLE_NAME, "table"},
  {PG_DIAG_COLUMN_NAME, "column"},
  {PG_DIAG_DATATYPE_NAME, "datatype"},
  {PG_DIAG_CONSTRAINT_NAME, "constraint"},
};

static void set_string(lua_State *L, const char *key, const char *value) {
  if (!value) return;
  lua_pushstring(L, value);
  lua_setfield(L, -2, key);
}

/* Push the message of a connection-level failure, redacted and trimmed. */
static void push_conn_message(lua_State *L, PGconn *pg) {
  const char *raw = pg ? PQerrorMessage(pg) : "no connection";
  if (!raw || !*raw) raw = "connection to the server was lost";
  size_t len = strlen(raw);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len * 3 + 16);
  size_t n = caracal_redact(raw, pg ? PQpass(pg) : NULL, out, len * 3 + 16);
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' ')) n--;
  luaL_pushresultsize(&b, n);
}

static void set_retryable(lua_State *L, const char *sqlstate) {
  bool retry = sqlstate && (strcmp(sqlstate, "40001") == 0 || strcmp(sqlstate, "40P01") == 0);
  lua_pushboolean(L, retry);
  lua_setfield(L, -2, "retryable");
}

void err_push_result(lua_State *L, PGconn *pg, const PGresult *res, const char *sql) {
  lua_createtable(L, 0, 16);
  const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (res && sqlstate) {
    for (size_t i = 0; i < sizeof result_fields / sizeof result_fields[0]; i++)
      set_string(L, result_fields[i].key, PQresultErrorField(res, result_fields[i].code));
  } else {
    /* No SQLSTATE: the connection failed (a terminated backend reports its
     * FATAL only through PQerrorMessage, with PQstatus BAD). */
    const char *rmsg = res ? PQresultErrorMessage(res) : NULL;
    if (rmsg && *rmsg && (!pg || PQstatus(pg) == CONNECTION_OK)) {
      size_t len = strlen(rmsg);
      while (len > 0 && rmsg[len - 1] == '\n') len--;
      lua_pushlstring(L, rmsg, len);
    } else {
      push_conn_message(L, pg);
    }
    lua_setfield(L, -2, "message");
    set_string(L, "severity", "FATAL");
  }
  bool lost = pg && PQstatus(pg) != CONNECTION_OK;
  if (lost && !sqlstate) set_string(L, "sqlstate", "08006");
  lua_pushboolean(L, lost);
  lua_setfield(L, -2, "connection_lost");
  set_retryable(L, sqlstate);
  set_string(L, "sql", sql);
  luaL_setmetatable(L, CARACAL_ERROR_MT);
}

void err_push_simple(lua_State *L, const char *sqlstate, const char *message) {
  lua_createtable(L, 0, 6);
  set_string(L, "sqlstate", sqlstate);
  set_string(L, "message", message);
  set_string(L, "severity", "ERROR");
  lua_pushboolean(L, false);
  lua_setfield(L, -2, "connection_lost");
  set_retryable(L, sqlstate);
  luaL_setmetatable(L, CARACAL_ERROR_MT);
}

void err_set_where(lua_State *L, int level) {
  luaL_where(L, level);                     /* err where */
  size_t len;
  const char *w = lua_tolstring(L, -1, &len);
  if (len >= 2 && w[len - 2] == ':' && w[len - 1] == ' ') {
    lua_pushlstring(L, w, len - 2);         /* err where trimmed */
    lua_setfield(L, -3, "where");
  }
  lua_pop(L, 1);
}

/* Append "\nLABEL: value" when the field is a non-empty string. */
static void add_line(lua_State *L, luaL_Buffer *b, int err, const char *label, const char *key) {
  if (lua_getfield(L, err, key) == LUA_TSTRING && lua_rawlen(L, -1) > 0) {
    const char *v = lua_tostring(L, -1);
    lua_pop(L, 1);
    luaL_addchar(b, '\n');
    luaL_addstring(b, label);
    luaL_addstring(b, ": ");
    luaL_addstring(b, v);
  } else {
    lua_pop(L, 1);
  }
}

/* __tostring: psql's shape, plus where the Lua code was and the SQL. */
static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_getfield(L, 1, "severity");
  const char *sev = lua_tostring(L, -1);
  if (!sev || strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0) sev = "ERROR";
  luaL_addstring(&b, sev);
  lua_pop(L, 1);
  if (lua_getfield(L, 1, "sqlstate") == LUA_TSTRING) {
    luaL_addchar(&b, ' ');
    luaL_addvalue(&b);
  } else {
    lua_pop(L, 1);
  }
  luaL_addstring(&b, ": ");
  if (lua_getfield(L, 1, "message") == LUA_TSTRING) luaL_addvalue(&b);
  else {
    lua_pop(L, 1);
    luaL_addstring(&b, "unknown error");
  }
  add_line(L, &b, 1, "DETAIL", "detail");
  add_line(L, &b, 1, "HINT", "hint");
  add_line(L, &b, 1, "OUTCOME", "outcome_message");
  add_line(L, &b, 1, "WHERE", "where");
  if (lua_getfield(L, 1, "sql") == LUA_TSTRING) {
    size_t len;
    const char *sql = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);
    luaL_addstring(&b, "\nSQL: ");
    if (len > 300) {
      luaL_addlstring(&b, sql, 300);
      luaL_addstring(&b, "...");
    } else {
      luaL_addlstring(&b, sql, len);
    }
  } else {
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
  return 1;
}

/* core.Error{...}: a structured error from Lua (validation, runner). */
static int error_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (lua_getfield(L, 1, "message") != LUA_TSTRING)
    return luaL_argerror(L, 1, "field 'message' must be a string");
  lua_pop(L, 1);
  int has_retryable = lua_getfield(L, 1, "retryable") != LUA_TNIL;
  lua_pop(L, 1);
  if (!has_retryable) {
    lua_getfield(L, 1, "sqlstate");
    char state[6] = "";
    if (lua_type(L, -1) == LUA_TSTRING) snprintf(state, sizeof state, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    set_retryable(L, state);
  }
  luaL_setmetatable(L, CARACAL_ERROR_MT);
  return 1;
}

static int error_is(lua_State *L) {
  int is = 0;
  if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) { /* mt */
    luaL_getmetatable(L, CARACAL_ERROR_MT);                      /* mt errmt */
    is = lua_rawequal(L, -1, -2);
  }
  lua_pushboolean(L, is);
  return 1;
}

void err_open(lua_State *L) {
  luaL_newmetatable(L, CARACAL_ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, CARACAL_ERROR_MT);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  lua_pushcfunction(L, error_new);
  lua_setfield(L, -2, "Error");
  lua_pushcfunction(L, error_is);
  lua_setfield(L, -2, "is_error");
}
