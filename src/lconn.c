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
 *
 * In a task in non-blocking mode (async.c), execute and exec_script yield
 * while the server works instead of blocking; see the state machine below.
 *
 * Behind a transaction pooler (conn:set_pooled(true), which caracal.db
 * does when the configuration says pooler = "transaction"), nothing may
 * rely on the server connection staying the same between transactions:
 * statements are prepared unnamed (Prepare and Describe in one pipeline,
 * then Parse/Bind/Execute in one round trip with the described types) and
 * no statement marks the connection for a session reset.
 */
#include <ctype.h>
#include <stdio.h>
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

/* Registry key: a weak-keyed set of every handle made in this state, so
 * caracal_close can give back connections that Lua code still holds
 * (a session in a suspended coroutine, a forgotten handle) at once,
 * rolled back, instead of whenever the collector gets to them. */
static const char REG_CONNS = 0;

/* Push the set of handles (made on first use). */
static void push_handle_set(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &REG_CONNS) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);                          /* set */
  lua_createtable(L, 0, 1);                 /* set mt */
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);                  /* set */
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &REG_CONNS);
}

void lconn_push(lua_State *L, caracal_Conn *conn, int pool_idx) {
  pool_idx = lua_absindex(L, pool_idx);
  push_handle_set(L);                       /* set */
  LConn *c = lua_newuserdatauv(L, sizeof *c, 1);
  c->conn = NULL;
  c->stmts_stale = false;
  luaL_setmetatable(L, CARACAL_CONN_MT);
  lua_pushvalue(L, pool_idx);
  lua_setiuservalue(L, -2, 1); /* the pool outlives its connections */
  c->conn = conn;
  lua_pushvalue(L, -1);                     /* set conn conn */
  lua_pushboolean(L, 1);
  lua_rawset(L, -4);                        /* set conn */
  lua_remove(L, -2);                        /* conn */
}

/* Back to the pool: now (reset, maybe a round trip) or parked for the
 * next checkout to reset (no I/O: finalizers, the tick loop). A
 * connection left in libpq's non-blocking mode by a task goes back the
 * way the pool and other borrowers expect it. */
static void give_back(caracal_Conn *conn, bool now) {
  if (PQisnonblocking(conn->pg)) PQsetnonblocking(conn->pg, 0);
  if (now) caracal_pool_checkin(conn);
  else caracal_pool_checkin_deferred(conn);
}

caracal_Conn *lconn_get(lua_State *L, int idx) {
  return ((LConn *)luaL_checkudata(L, idx, CARACAL_CONN_MT))->conn;
}

void lconn_release_deferred(lua_State *L, int idx) {
  LConn *c = luaL_checkudata(L, idx, CARACAL_CONN_MT);
  caracal_Conn *conn = c->conn;
  c->conn = NULL;
  if (conn) give_back(conn, false);
}

void lconn_release_all(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &REG_CONNS) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {                 /* set handle true */
    lua_pop(L, 1);
    LConn *c = luaL_testudata(L, -1, CARACAL_CONN_MT);
    if (c && c->conn) {
      caracal_Conn *conn = c->conn;
      c->conn = NULL;
      give_back(conn, true);
    }
  }
  lua_pop(L, 1);
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
  /* Pooled: the session is the pooler's; a reset would run on whichever
   * server connection it picks (and caracal.db refuses session state). */
  if (c->conn->pooled) {
    if (word_is(tag, "ALTER") || word_is(tag, "DROP") || word_is(tag, "CREATE") ||
        word_is(tag, "COMMENT") || word_is(tag, "TRUNCATE"))
      c->stmts_stale = true;
    return;
  }
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

/*
 * execute and exec_script are one state machine, run the same way whether
 * it blocks or yields. Each step sends one command (PQsend*) and the next
 * step reads its results; reading (collect) blocks in PQgetResult on the
 * blocking path, and in a task in non-blocking mode yields to
 * caracal_poll until libpq holds a whole result (async.c), then the
 * continuation (exec_k) picks up at the same step. So parameter
 * collection, the statement cache, note_effects and result pushing exist
 * once. The steps for execute:
 *
 *   BEGIN -> [DEALLOCATE ALL if DDL made the cache suspect] -> LOOKUP
 *   LOOKUP -> cached: BIND | cache full: DEALLOCATE the LRU one -> PREPARE
 *   PREPARE (PQsendPrepare) -> DESCRIBE (PQsendDescribePrepared) -> BIND
 *   BIND (PQsendQueryPrepared) -> done; a stale plan re-prepares once
 *
 * Pooled, nothing is deallocated on the server (the cache is forgotten
 * locally), PREPARE sends Prepare and Describe of the unnamed statement
 * in one pipeline (PIPELINED reads both and the Sync), and BIND is
 * PQsendQueryParams with the described parameter types.
 *
 * exec_script is one step: PQsendQuery of the whole text.
 * The machine's state is a userdata kept on the stack above the
 * arguments (the stack survives a yield); its __gc frees results and a
 * half-prepared statement if the coroutine is abandoned.
 */
#define EXEC_MT "caracal.Exec"

enum {
  X_BEGIN, X_DEALLOCATED, X_LOOKUP, X_EVICTED, X_PREPARE, X_PREPARED, X_DESCRIBED, X_PIPELINED,
  X_BIND, X_EXECUTED, X_SCRIPT, X_SCRIPTED
};

typedef struct Exec {
  int step;
  bool sent;       /* the results of the last command are still to be read */
  bool async;      /* yield instead of blocking */
  bool empty;      /* an empty query was among the results */
  bool binary;     /* results requested in binary */
  bool pipeline;   /* in libpq's pipeline mode: read up to the Sync */
  int attempt;
  Stmt *st;        /* the cached statement being run */
  Stmt *fresh;     /* being prepared: not in the cache yet, ours to free */
  Stmt *victim;    /* being deallocated to make room */
  PGresult *last;  /* the last successful result */
  PGresult *error; /* the first failed result */
  const char *copy_refused; /* COPY reached execute: why it was stopped */
} Exec;

static void exec_clear(Exec *e) {
  PQclear(e->last);
  PQclear(e->error);
  e->last = e->error = NULL;
  e->empty = false;
  e->copy_refused = NULL;
}

static int exec_gc(lua_State *L) {
  Exec *e = lua_touserdata(L, 1);
  exec_clear(e);
  stmt_discard(e->fresh);
  e->fresh = NULL;
  return 0;
}

/* Read the results of the command sent last until libpq has none left
 * (in pipeline mode: up to the Sync's answer, then leave the mode):
 * the last success is kept (note_effects on each when they are the
 * user's statements), and the first failure. Returns false only in async
 * mode, when reading on would block: the caller yields and calls again. */
static bool collect(LConn *c, Exec *e, const char *sql, bool user) {
  PGconn *pg = c->conn->pg;
  for (;;) {
    if (e->async && PQstatus(pg) == CONNECTION_OK) {
      /* A failed read leaves the connection bad: PQgetResult then
       * reports it without waiting. */
      if (PQconsumeInput(pg) && PQisBusy(pg)) return false;
    }
    PGresult *r = PQgetResult(pg);
    if (!r) {
      /* In a pipeline, the end of one command's results: the next one's
       * (or the Sync's answer) follows. */
      if (e->pipeline && PQstatus(pg) == CONNECTION_OK) continue;
      break;
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    switch (PQresultStatus(r)) {
      case PGRES_PIPELINE_ABORTED: /* not run: an earlier command failed */
        PQclear(r);
        break;
      case PGRES_TUPLES_OK:
      case PGRES_COMMAND_OK:
        if (user) note_effects(c, PQcmdStatus(r), sql);
        PQclear(e->last);
        e->last = r;
        break;
      case PGRES_EMPTY_QUERY:
        e->empty = true;
        PQclear(r);
        break;
      case PGRES_COPY_IN:
        /* No data source here: end the COPY with an error so the server
         * aborts it and the connection stays usable. */
        e->copy_refused = "COPY FROM STDIN cannot run through execute";
        PQputCopyEnd(pg, e->copy_refused);
        PQclear(r);
        break;
      case PGRES_COPY_OUT: {
        e->copy_refused = "COPY TO STDOUT cannot run through execute";
        PQclear(r);
        char *buf;
        int got;
        while ((got = PQgetCopyData(pg, &buf, e->async)) > 0) PQfreemem(buf);
        if (got == 0) return false; /* async: more rows to discard later */
        break;
      }
      default:
        /* The first failure is the one to report, except when the
         * connection died: then libpq's own last word says so (as
         * PQexec would return it), with no SQLSTATE, hence 08006. */
        if (!e->error || PQstatus(pg) != CONNECTION_OK) {
          PQclear(e->error);
          e->error = r;
        } else {
          PQclear(r);
        }
        break;
    }
  }
  if (e->pipeline) {
    PQexitPipelineMode(pg);
    e->pipeline = false;
  }
  e->sent = false;
  return true;
}

/* The error of a failed command (or the connection's), raised. */
static int exec_raise(lua_State *L, LConn *c, Exec *e, const char *sql) {
  PGresult *err = e->error;
  e->error = NULL;
  exec_clear(e);
  stmt_discard(e->fresh);
  e->fresh = NULL;
  return raise_result(L, c, err, sql);
}

/* A command was handed to libpq: read its results at the next step. */
static bool exec_sent(Exec *e, int ok, int next) {
  e->sent = true;
  e->step = next;
  return ok != 0;
}

static int exec_k(lua_State *L, int status, lua_KContext ctx);

/* Run the machine from its current step; arguments are at 1 (conn),
 * 2 (sql), 3.. (parameters), the Exec at esi. Returns execute's three
 * results or raises; yields in async mode. */
static int exec_run(lua_State *L, int esi) {
  Exec *e = lua_touserdata(L, esi);
  LConn *c = lua_touserdata(L, 1);
  const char *sql = lua_tostring(L, 2);
  if (!c->conn) return luaL_error(L, "attempt to use a released connection");
  caracal_Conn *conn = c->conn;
  PGconn *pg = conn->pg;
  for (;;) {
    if (e->sent && !collect(c, e, sql, e->step == X_EXECUTED || e->step == X_SCRIPTED))
      return async_yield_conn(L, &c->conn, (lua_KContext)esi, exec_k);
    switch (e->step) {
      case X_BEGIN:
        if (!c->stmts_stale) {
          e->step = X_LOOKUP;
        } else if (conn->pooled) { /* nothing named on the server */
          stmt_forget_all(conn);
          c->stmts_stale = false;
          e->step = X_LOOKUP;
        } else if (!exec_sent(e, PQsendQuery(pg, "DEALLOCATE ALL"), X_DEALLOCATED)) {
          return exec_raise(L, c, e, sql);
        }
        break;
      case X_DEALLOCATED: /* its outcome does not matter: we forget them all */
        exec_clear(e);
        stmt_forget_all(conn);
        c->stmts_stale = false;
        e->step = X_LOOKUP;
        break;
      case X_LOOKUP:
        if ((e->st = stmt_find(conn, sql)) != NULL) {
          e->step = X_BIND;
        } else if (conn->pooled) {
          Stmt *old = stmt_victim(conn);
          if (old) stmt_forget(conn, old);
          e->step = X_PREPARE;
        } else if ((e->victim = stmt_victim(conn)) != NULL) {
          char dealloc[48];
          snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", e->victim->name);
          if (!exec_sent(e, PQsendQuery(pg, dealloc), X_EVICTED)) return exec_raise(L, c, e, sql);
        } else {
          e->step = X_PREPARE;
        }
        break;
      case X_EVICTED:
        exec_clear(e);
        stmt_forget(conn, e->victim);
        e->victim = NULL;
        e->step = X_PREPARE;
        break;
      case X_PREPARE:
        if (!(e->fresh = stmt_new(conn, sql))) return luaL_error(L, "out of memory preparing a statement");
        if (conn->pooled) {
          /* One Sync for both, so they reach the same server connection. */
          if (!PQenterPipelineMode(pg)) return exec_raise(L, c, e, sql);
          e->pipeline = true;
          int ok = PQsendPrepare(pg, "", sql, 0, NULL) && PQsendDescribePrepared(pg, "") && PQpipelineSync(pg);
          if (!exec_sent(e, ok, X_PIPELINED)) {
            PQexitPipelineMode(pg);
            e->pipeline = false;
            return exec_raise(L, c, e, sql);
          }
          break;
        }
        if (!exec_sent(e, PQsendPrepare(pg, e->fresh->name, sql, 0, NULL), X_PREPARED))
          return exec_raise(L, c, e, sql);
        break;
      case X_PREPARED:
        if (e->error || !e->last) return exec_raise(L, c, e, sql);
        exec_clear(e);
        if (!exec_sent(e, PQsendDescribePrepared(pg, e->fresh->name), X_DESCRIBED))
          return exec_raise(L, c, e, sql);
        break;
      case X_PIPELINED: /* Prepare's and Describe's results were read: the last is Describe's */
      case X_DESCRIBED:
        if (e->error || !e->last || PQstatus(pg) != CONNECTION_OK) return exec_raise(L, c, e, sql);
        if (!stmt_add(conn, e->fresh, e->last)) {
          exec_clear(e);
          return luaL_error(L, "out of memory preparing a statement");
        }
        e->st = e->fresh;
        e->fresh = NULL;
        exec_clear(e);
        e->step = X_BIND;
        break;
      case X_BIND: {
        int n = esi - 3;
        Stmt *st = e->st;
        if (n != st->nparams)
          return luaL_error(L, "the statement takes %d parameter%s ($1..$%d), got %d", st->nparams,
                            st->nparams == 1 ? "" : "s", st->nparams, n);
        Params p;
        param_collect(L, 3, n, st->param_types, &p);
        e->binary = st->binary;
        /* libpq copies the values into its output buffer: their storage
         * on the stack can go before the results come. */
        int ok = conn->pooled
          ? PQsendQueryParams(pg, sql, n, st->param_types, p.values, p.lengths, p.formats, e->binary ? 1 : 0)
          : PQsendQueryPrepared(pg, st->name, n, p.values, p.lengths, p.formats, e->binary ? 1 : 0);
        lua_settop(L, esi);
        if (!exec_sent(e, ok, X_EXECUTED)) return exec_raise(L, c, e, sql);
        break;
      }
      case X_EXECUTED:
        if (e->error && stale_statement(e->error)) {
          /* Re-prepare once, and only when no transaction would be lost. */
          stmt_forget(conn, e->st);
          e->st = NULL;
          if (e->attempt++ == 0 && PQtransactionStatus(pg) == PQTRANS_IDLE) {
            exec_clear(e);
            e->step = X_LOOKUP;
            break;
          }
        }
        if (e->copy_refused && !e->error) {
          const char *why = e->copy_refused;
          exec_clear(e);
          return luaL_error(L, "%s (use the COPY API)", why);
        }
        if (e->error || PQstatus(pg) != CONNECTION_OK) return exec_raise(L, c, e, sql);
        if (!e->last) {
          exec_clear(e);
          return luaL_error(L, "the SQL text contains no statement");
        }
        push_outcome(L, e->last, e->binary);
        exec_clear(e);
        return 3;
      case X_SCRIPT:
        if (!exec_sent(e, PQsendQuery(pg, sql), X_SCRIPTED)) return exec_raise(L, c, e, sql);
        break;
      case X_SCRIPTED:
        if (e->error || PQstatus(pg) != CONNECTION_OK) return exec_raise(L, c, e, sql);
        if (e->copy_refused) {
          const char *why = e->copy_refused;
          exec_clear(e);
          return luaL_error(L, "%s (use the COPY API)", why);
        }
        if (!e->last) {
          lua_createtable(L, 0, 1);
          lua_newtable(L);
          lua_setfield(L, -2, "columns");
          lua_pushinteger(L, 0);
          lua_pushliteral(L, "");
        } else {
          push_outcome(L, e->last, false);
        }
        exec_clear(e);
        return 3;
    }
  }
}

static int exec_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(status);
  return exec_run(L, (int)ctx);
}

/* Set up the machine above the arguments and run it. */
static int exec_start(lua_State *L, bool script) {
  LConn *c = check_conn(L, 1);
  const char *sql = luaL_checkstring(L, 2);
  if (script) lua_settop(L, 2);
  PGconn *pg = c->conn->pg;
  if (PQstatus(pg) != CONNECTION_OK) return raise_result(L, c, NULL, sql);
  if (PQtransactionStatus(pg) == PQTRANS_ACTIVE)
    return luaL_error(L, "the connection is busy: a statement is still running on it "
                         "(another coroutine is using it)");
  /* libpq refuses a ParameterDescription longer than 30000 bytes and then
   * drops the connection ("lost synchronization"), so refuse here, before
   * anything is sent, what the server would describe at 4 bytes each. */
  if (!script && lua_gettop(L) - 2 > CARACAL_MAX_PARAMS) {
    char msg[160];
    snprintf(msg, sizeof msg, "too many parameters: %d (at most %d in one statement); use "
             "session:bulk_insert, COPY or several statements", lua_gettop(L) - 2, CARACAL_MAX_PARAMS);
    err_push_simple(L, NULL, msg);
    lua_pushliteral(L, "too_many_parameters");
    lua_setfield(L, -2, "kind");
    err_set_where(L, 1);
    return lua_error(L);
  }
  Exec *e = lua_newuserdatauv(L, sizeof *e, 0);
  memset(e, 0, sizeof *e);
  luaL_setmetatable(L, EXEC_MT);
  e->step = script ? X_SCRIPT : X_BEGIN;
  e->async = async_can_yield(L);
  /* Sends must not block either: libpq queues what the socket does not
   * take, and async.c waits for it to drain. */
  if (e->async && !PQisnonblocking(pg)) PQsetnonblocking(pg, 1);
  return exec_run(L, lua_gettop(L));
}

/* conn:execute(sql, ...) -> rows, affected, tag */
static int conn_execute(lua_State *L) { return exec_start(L, false); }

/* conn:exec_script(sql) -> rows of the last statement, affected, tag.
 * Runs one or more statements with the simple protocol and no parameters
 * (migrations, DDL); results are decoded from text. */
static int conn_exec_script(lua_State *L) { return exec_start(L, true); }

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
  if (len > 63) {
    /* lua_pushfstring has no precision: show the first 40 bytes by hand. */
    lua_pushlstring(L, name, 40);
    return luaL_error(L, "invalid identifier: '%s...' is %d bytes, PostgreSQL allows 63", lua_tostring(L, -1),
                      (int)len);
  }
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

/* conn:set_pooled(on): this connection goes through a transaction pooler
 * (see the top of this file). It stays so for the life of the server
 * connection; a change forgets the statements prepared the other way. */
static int conn_set_pooled(lua_State *L) {
  LConn *c = check_conn(L, 1);
  luaL_checkany(L, 2);
  bool on = lua_toboolean(L, 2);
  if (c->conn->pooled != on) {
    stmt_forget_all(c->conn);
    c->conn->pooled = on;
  }
  return 0;
}

/* conn:is_pooled() -> boolean */
static int conn_is_pooled(lua_State *L) {
  lua_pushboolean(L, check_conn(L, 1)->conn->pooled);
  return 1;
}

/* conn:release(): back to the pool now (reset first). Idempotent. */
static int conn_release(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  caracal_Conn *conn = c->conn;
  c->conn = NULL;
  if (conn) give_back(conn, true);
  return 0;
}

/* __gc: no SQL in a finalizer; a connection that needs a reset is parked. */
static int conn_gc(lua_State *L) {
  LConn *c = luaL_checkudata(L, 1, CARACAL_CONN_MT);
  caracal_Conn *conn = c->conn;
  c->conn = NULL;
  if (conn) give_back(conn, false);
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
  {"set_pooled", conn_set_pooled},
  {"is_pooled", conn_is_pooled},
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
  luaL_newmetatable(L, EXEC_MT);
  lua_pushcfunction(L, exec_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}
