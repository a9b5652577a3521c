/*
 * lconn.c: a checked-out connection as a Lua object ("caracal.Connection").
 *
 *   local rows, count, tag = conn:execute("select $1::int as n", 42)
 *   conn:exec_script("create table a(x int); create index on a(x)")
 *   conn:release()   -- or let <close> / the collector return it
 *
 * execute() prepares each distinct SQL text once per connection
 * (stmtcache.c), sends parameters separately (params.c) and decodes the
 * rows in C (result.c). Server errors raise caracal.Error objects.
 *
 * Returning a connection: release() and __close check it in now (a reset
 * may take a round trip); __gc never runs SQL, it parks the connection
 * for the next checkout to reset (caracal_pool_checkin_deferred).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

typedef struct LConn {
  caracal_Conn *conn; /* NULL once released */
  bool stmts_stale;   /* DDL ran: cached statements may describe old shapes */
} LConn;

static LConn *check_conn(lua_State *L, int idx) {
  LConn *c = luaL_checkudata(L, idx, CARACAL_CONN_MT);
  if (!c->conn) luaL_error(L, "attempt to use a released connection");
  return c;
}

void lconn_push(lua_State *L, caracal_Conn *conn, int pool_idx) {
  pool_idx = lua_absindex(L, pool_idx);
  LConn *c = lua_newuserdatauv(L, sizeof *c, 1);
  c->conn = NULL;
  c->stmts_stale = false;
  luaL_setmetatable(L, CARACAL_CONN_MT);
  lua_pushvalue(L, pool_idx);
  lua_setiuservalue(L, -2, 1); /* the pool outlives its connections */
  c->conn = conn;
}

/* Raise the error of a failed result (res may be NULL: connection lost). */
static int raise_result(lua_State *L, LConn *c, PGresult *res, const char *sql) {
  err_push_result(L, c->conn->pg, res, sql);
  PQclear(res);
  if (PQstatus(c->conn->pg) != CONNECTION_OK) caracal_conn_invalidate(c->conn);
  err_set_where(L, 1);
  return lua_error(L);
}

static bool word_is(const char *tag, const char *word) {
  size_t n = strlen(word);
  return strncmp(tag, word, n) == 0 && (tag[n] == '\0' || tag[n] == ' ');
}

static bool contains_ci(const char *s, const char *needle) {
  return strcasestr(s, needle) != NULL;
}

/*
 * What a successful statement did to the session, judged by its command
 * tag (and, for functions that change state inside a SELECT, its text):
 * session state changes make the pool fully reset the connection on
 * return; DDL makes cached statement descriptions suspect.
 */
static void note_effects(LConn *c, const char *tag, const char *sql) {
  if (word_is(tag, "SET") || word_is(tag, "RESET") || word_is(tag, "LISTEN") ||
      word_is(tag, "PREPARE") || word_is(tag, "DECLARE") || word_is(tag, "LOAD") ||
      (word_is(tag, "CREATE") && contains_ci(sql, "temp")) ||
      (word_is(tag, "SELECT") && (contains_ci(sql, "advisory") || contains_ci(sql, "set_config"))))
    caracal_conn_mark_dirty(c->conn);
  if (word_is(tag, "DISCARD") || word_is(tag, "DEALLOCATE")) {
    /* The server dropped (some of) our prepared statements. */
    stmt_forget_all(c->conn);
    caracal_conn_mark_dirty(c->conn);
  }
  if (word_is(tag, "ALTER") || word_is(tag, "DROP") || word_is(tag, "CREATE") ||
      word_is(tag, "COMMENT") || word_is(tag, "TRUNCATE"))
    c->stmts_stale = true;
}

/* A cached statement the server no longer accepts as it is. */
static bool stale_statement(const PGresult *r) {
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  return state && (strcmp(state, "26000") == 0 ||
                   (strcmp(state, "0A000") == 0 && msg && strstr(msg, "cached plan")));
}

static void push_outcome(lua_State *L, PGresult *r, bool binary) {
  if (PQresultStatus(r) == PGRES_TUPLES_OK) res_push_rows(L, r, binary);
  else {
    lua_createtable(L, 0, 1);
    lua_newtable(L);
    lua_setfield(L, -2, "columns");
  }
  const char *count = PQcmdTuples(r);
  if (count && *count) lua_pushinteger(L, (lua_Integer)strtoll(count, NULL, 10));
  else lua_pushinteger(L, 0);
  lua_pushstring(L, PQcmdStatus(r));
}

/* conn:execute(sql, ...) -> rows, affected, tag */
static int conn_execute(lua_State *L) {
  LConn *c = check_conn(L, 1);
  const char *sql = luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2;
  PGconn *pg = c->conn->pg;
  if (PQstatus(pg) != CONNECTION_OK) return raise_result(L, c, NULL, sql);
  if (c->stmts_stale) {
    PQclear(PQexec(pg, "DEALLOCATE ALL"));
    stmt_forget_all(c->conn);
    c->stmts_stale = false;
  }
  for (int attempt = 0;; attempt++) {
    PGresult *failed;
    Stmt *st = stmt_get(c->conn, sql, &failed);
    if (!st) return raise_result(L, c, failed, sql);
    if (n != st->nparams)
      return luaL_error(L, "the statement takes %d parameter%s ($1..$%d), got %d", st->nparams,
                        st->nparams == 1 ? "" : "s", st->nparams, n);
    int top = lua_gettop(L);
    Params p;
    param_collect(L, 3, n, st->param_types, &p);
    bool binary = st->binary;
    PGresult *r = PQexecPrepared(pg, st->name, n, p.values, p.lengths, p.formats, binary ? 1 : 0);
    lua_settop(L, top);
    ExecStatusType rs = PQresultStatus(r);
    if (rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK) {
      note_effects(c, PQcmdStatus(r), sql);
      push_outcome(L, r, binary);
      PQclear(r);
      return 3;
    }
    if (rs == PGRES_EMPTY_QUERY) {
      PQclear(r);
      return luaL_error(L, "the SQL text contains no statement");
    }
    if (r && stale_statement(r)) {
      /* Re-prepare once, and only when no transaction would be lost. */
      stmt_forget(c->conn, st);
      if (attempt == 0 && PQtransactionStatus(pg) == PQTRANS_IDLE) {
        PQclear(r);
        continue;
      }
    }
    return raise_result(L, c, r, sql);
  }
}

/* conn:exec_script(sql) -> rows of the last statement, affected, tag.
 * Runs one or more statements with the simple protocol and no parameters
 * (migrations, DDL); results are decoded from text. */
static int conn_exec_script(lua_State *L) {
  LConn *c = check_conn(L, 1);
  const char *sql = luaL_checkstring(L, 2);
  PGconn *pg = c->conn->pg;
  if (!PQsendQuery(pg, sql)) return raise_result(L, c, NULL, sql);
  PGresult *r, *last = NULL, *error = NULL;
  while ((r = PQgetResult(pg)) != NULL) {
    ExecStatusType rs = PQresultStatus(r);
    if (rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK) {
      note_effects(c, PQcmdStatus(r), sql);
      PQclear(last);
      last = r;
    } else if (rs == PGRES_EMPTY_QUERY) {
      PQclear(r);
    } else if (!error) {
      error = r;
    } else {
      PQclear(r);
    }
  }
  if (error || PQstatus(pg) != CONNECTION_OK) {
    PQclear(last);
    return raise_result(L, c, error, sql);
  }
  if (!last) {
    lua_createtable(L, 0, 1);
    lua_newtable(L);
    lua_setfield(L, -2, "columns");
    lua_pushinteger(L, 0);
    lua_pushliteral(L, "");
    return 3;
  }
  push_outcome(L, last, false);
  PQclear(last);
  return 3;
}

/* conn:transaction_status() -> "idle" | "active" | "in_transaction" |
 * "failed" | "unknown" (the last: the connection is lost). */
static int conn_transaction_status(lua_State *L) {
  LConn *c = check_conn(L, 1);
  static const char *const names[] = {"idle", "active", "in_transaction", "failed", "unknown"};
  PGTransactionStatusType ts = PQtransactionStatus(c->conn->pg);
  lua_pushstring(L, names[ts <= PQTRANS_UNKNOWN ? ts : PQTRANS_UNKNOWN]);
  return 1;
}

/* conn:is_lost() -> true when the server connection is gone. */
static int conn_is_lost(lua_State *L) {
  LConn *c = check_conn(L, 1);
  lua_pushboolean(L, PQstatus(c->conn->pg) != CONNECTION_OK);
  return 1;
}

static int conn_backend_pid(lua_State *L) {
  lua_pushinteger(L, PQbackendPID(check_conn(L, 1)->conn->pg));
  return 1;
}

static int conn_server_version(lua_State *L) {
  lua_pushinteger(L, PQserverVersion(check_conn(L, 1)->conn->pg));
  return 1;
}

/* conn:parameter(name) -> a server-reported setting (DateStyle, ...) */
static int conn_parameter(lua_State *L) {
  LConn *c = check_conn(L, 1);
  const char *v = PQparameterStatus(c->conn->pg, luaL_checkstring(L, 2));
  if (v) lua_pushstring(L, v);
  else lua_pushnil(L);
  return 1;
}

/* conn:database(), conn:user(): where this connection points. */
static int conn_database(lua_State *L) {
  lua_pushstring(L, PQdb(check_conn(L, 1)->conn->pg));
  return 1;
}

static int conn_user(lua_State *L) {
  lua_pushstring(L, PQuser(check_conn(L, 1)->conn->pg));
  return 1;
}

/* conn:quote_ident(name) -> "name" quoted for SQL. Refuses names the
 * server would silently truncate (over 63 bytes) and invalid encoding. */
static int conn_quote_ident(lua_State *L) {
  LConn *c = check_conn(L, 1);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  if (len == 0) return luaL_error(L, "invalid identifier: empty name");
  if (len > 63) return luaL_error(L, "invalid identifier: '%.40s...' is %d bytes, PostgreSQL allows 63", name, (int)len);
  if (memchr(name, '\0', len)) return luaL_error(L, "invalid identifier: contains a NUL byte");
  char *q = PQescapeIdentifier(c->conn->pg, name, len);
  if (!q) return luaL_error(L, "invalid identifier: %s", PQerrorMessage(c->conn->pg));
  lua_pushstring(L, q);
  PQfreemem(q);
  return 1;
}

/* conn:cancel() -> true when the server took the cancel request. */
static int conn_cancel(lua_State *L) {
  LConn *c = check_conn(L, 1);
  PGcancel *cancel = PQgetCancel(c->conn->pg);
  char err[256];
  int ok = cancel && PQcancel(cancel, err, sizeof err);
  if (cancel) PQfreeCancel(cancel);
  lua_pushboolean(L, ok);
  return 1;
}

/* conn:notices() -> the server's notices since the last call, oldest first
 * (each "NOTICE:  ..." as psql prints it, without the final newline). */
static int conn_notices(lua_State *L) {
  LConn *c = check_conn(L, 1);
  caracal_Conn *conn = c->conn;
  lua_createtable(L, conn->nnotices, 0);
  for (int i = 0; i < conn->nnotices; i++) {
    size_t n = strlen(conn->notices[i]);
    while (n > 0 && conn->notices[i][n - 1] == '\n') n--;
    lua_pushlstring(L, conn->notices[i], n);
    lua_rawseti(L, -2, i + 1);
  }
  pool_clear_notices(conn);
  return 1;
}

static int conn_invalidate(lua_State *L) {
  caracal_conn_invalidate(check_conn(L, 1)->conn);
  return 0;
}

static int conn_mark_dirty(lua_State *L) {
  caracal_conn_mark_dirty(check_conn(L, 1)->conn);
  return 0;
}

/* conn:release(): back to the pool now (reset first). Idempotent. */
static int conn_release(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  caracal_Conn *conn = c->conn;
  c->conn = NULL;
  if (conn) caracal_pool_checkin(conn);
  return 0;
}

/* __gc: no SQL in a finalizer; a connection that needs a reset is parked. */
static int conn_gc(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  caracal_Conn *conn = c->conn;
  c->conn = NULL;
  if (conn) caracal_pool_checkin_deferred(conn);
  return 0;
}

static int conn_released(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  lua_pushboolean(L, c->conn == NULL);
  return 1;
}

static int conn_tostring(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  if (!c->conn) lua_pushliteral(L, "caracal.Connection (released)");
  else lua_pushfstring(L, "caracal.Connection (pid %d, db %s)", PQbackendPID(c->conn->pg),
                       PQdb(c->conn->pg));
  return 1;
}

static const luaL_Reg conn_methods[] = {
  {"execute", conn_execute},
  {"exec_script", conn_exec_script},
  {"transaction_status", conn_transaction_status},
  {"is_lost", conn_is_lost},
  {"backend_pid", conn_backend_pid},
  {"server_version", conn_server_version},
  {"parameter", conn_parameter},
  {"database", conn_database},
  {"user", conn_user},
  {"quote_ident", conn_quote_ident},
  {"cancel", conn_cancel},
  {"notices", conn_notices},
  {"invalidate", conn_invalidate},
  {"mark_dirty", conn_mark_dirty},
  {"release", conn_release},
  {"released", conn_released},
  {NULL, NULL}
};

void lconn_open(lua_State *L) {
  luaL_newmetatable(L, CARACAL_CONN_MT);
  luaL_newlib(L, conn_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, conn_release);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, conn_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
