/*
 * lbulk.c: the bulk paths of a connection, added to "caracal.Connection":
 *
 *   local results, affected = conn:execute_pipeline(sql, { {p1, p2}, {p1, p2}, ... })
 *   local count = conn:copy_in("COPY t (a, b) FROM STDIN", rows, {keys = {"a", "b"}, types = {...}})
 *
 * execute_pipeline runs one statement once per parameter row with libpq's
 * pipeline mode: every row is sent without waiting for the previous one's
 * answer, and one Sync ends the batch, so N rows cost about one round trip
 * instead of N. It shares everything else with execute: the statement is
 * prepared once per connection (stmtcache.c; the first row goes through
 * execute itself, which also handles a cache that DDL made suspect),
 * parameters are converted by params.c and rows decoded by result.c.
 *
 * copy_in streams rows to COPY ... FROM STDIN in text format, each value
 * converted exactly as a parameter would be (param_collect: Decimals,
 * Instants, JSON, arrays) and escaped for COPY in C. The rows may come
 * from a function called between batches, so a caller's own work on the
 * next batch (caracal.bulk validates it) overlaps with the server's.
 *
 * Errors are caracal.Error values as everywhere. On any failure the
 * statement (the batch, the COPY) has failed on the server: inside a
 * transaction the transaction is aborted and the caller's scope rolls it
 * back. Both leave the connection idle and usable, whatever happened
 * (a Lua error while encoding included: a to-be-closed guard ends the
 * pipeline or the COPY).
 *
 * In a task in non-blocking mode (async.c), execute_pipeline runs the rows
 * one by one through execute, so the task yields while the server works;
 * copy_in blocks (bulk imports are not tick-loop work).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PIPE_GUARD_MT "caracal.PipelineGuard"
#define COPY_GUARD_MT "caracal.CopyGuard"

/* Results of up to this many rows may wait in libpq before we read them
 * (bounds memory: the rest are read while sending). */
#define PIPE_READ_EVERY 64
/* COPY data is handed to libpq in chunks of about this size. */
#define COPY_CHUNK 65536

static caracal_Conn *check_conn(lua_State *L, int idx) {
  caracal_Conn *conn = lconn_get(L, idx);
  if (!conn) luaL_error(L, "attempt to use a released connection");
  return conn;
}

/* The refusals execute makes before sending anything. */
static void check_ready(lua_State *L, caracal_Conn *conn, const char *sql) {
  if (PQstatus(conn->pg) != CONNECTION_OK) {
    err_push_result(L, conn->pg, NULL, sql);
    caracal_conn_invalidate(conn);
    err_set_where(L, 2);
    lua_error(L);
  }
  if (PQtransactionStatus(conn->pg) == PQTRANS_ACTIVE)
    luaL_error(L, "the connection is busy: a statement is still running on it "
                  "(another coroutine is using it)");
}

/* Raise the error of a failed result (NULL: the connection's own error). */
static int raise_result(lua_State *L, caracal_Conn *conn, PGresult *res, const char *sql) {
  err_push_result(L, conn->pg, res, sql);
  PQclear(res);
  if (PQstatus(conn->pg) != CONNECTION_OK) caracal_conn_invalidate(conn);
  err_set_where(L, 1);
  return lua_error(L);
}

/*
 * The stack of execute_pipeline, kept fixed so the async path's
 * continuation finds everything after a yield.
 */
enum {
  P_CONN = 1, P_SQL, P_ROWS,
  P_KEYS,     /* opts.keys: parameter k of a row is row[keys[k]] (or nil: row[k]) */
  P_INTO,     /* opts.into: column name -> key to store the returned row in (or nil) */
  P_RESULTS,  /* the results table (rows itself with into) */
  P_AFFECTED, /* the sum of the affected counts */
  P_NEXT,     /* async: the next row */
  P_COUNT,    /* async: the number of rows */
  P_TOP = P_COUNT
};

/* Number of parameters of a positional row: row.n when given, else the
 * statement's (np >= 0), else the row's length. A longer row is an error. */
static int row_nparams(lua_State *L, int row, lua_Integer i, int np) {
  int n = np;
  if (lua_getfield(L, row, "n") == LUA_TNUMBER) {
    lua_Integer given = lua_tointeger(L, -1);
    if (np >= 0 && given != np)
      luaL_error(L, "row %I: the statement takes %d parameter%s, got %I", (LUAI_UACINT)i, np,
                 np == 1 ? "" : "s", (LUAI_UACINT)given);
    n = (int)given;
  }
  lua_pop(L, 1);
  lua_Unsigned len = lua_rawlen(L, row);
  if (n < 0) n = (int)len;
  else if (len > (lua_Unsigned)n)
    luaL_error(L, "row %I: the statement takes %d parameter%s, got %d", (LUAI_UACINT)i, n,
               n == 1 ? "" : "s", (int)len);
  return n;
}

/* Push the row at rows[i] (checked to be a table); returns its index. */
static int push_row(lua_State *L, int rows, lua_Integer i) {
  if (lua_rawgeti(L, rows, i) != LUA_TTABLE)
    luaL_error(L, "row %I: expected a table, got %s", (LUAI_UACINT)i, luaL_typename(L, -1));
  return lua_gettop(L);
}

/* Push the parameters of the row at index row (row i of the list);
 * returns how many. np: the statement's count, -1 when not known yet. */
static int push_params(lua_State *L, int row, lua_Integer i, int np) {
  int n;
  if (lua_isnil(L, P_KEYS)) {
    n = row_nparams(L, row, i, np);
    luaL_checkstack(L, n + 4, "too many parameters");
    for (int k = 1; k <= n; k++) lua_rawgeti(L, row, k);
  } else {
    n = (int)lua_rawlen(L, P_KEYS);
    if (np >= 0 && n != np)
      luaL_error(L, "the statement takes %d parameter%s, got %d keys", np, np == 1 ? "" : "s", n);
    luaL_checkstack(L, n + 4, "too many parameters");
    for (int k = 1; k <= n; k++) {
      lua_rawgeti(L, P_KEYS, k);
      lua_rawget(L, row);
    }
  }
  return n;
}

/* Push execute, conn, sql and row i's parameters; returns the number of
 * arguments for execute. */
static int push_execute_call(lua_State *L, lua_Integer i, int np) {
  luaL_checkstack(L, 8, "pipeline");
  if (luaL_getmetafield(L, P_CONN, "__index") != LUA_TTABLE) luaL_error(L, "caracal.Connection has no methods");
  lua_getfield(L, -1, "execute");
  lua_remove(L, -2);                        /* execute */
  lua_pushvalue(L, P_CONN);
  lua_pushvalue(L, P_SQL);                  /* execute conn sql */
  int row = push_row(L, P_ROWS, i);         /* execute conn sql row */
  int n = push_params(L, row, i, np);       /* execute conn sql row p1..pn */
  lua_remove(L, row);                       /* execute conn sql p1..pn */
  return n + 2;
}

/* Store execute's (rows, count) on top as the result of row i: into
 * rows[i] through the into map, or as results[i]. */
static void store_result(lua_State *L, lua_Integer i) {
  lua_Integer count = lua_tointeger(L, -1);
  lua_pop(L, 1);                            /* rows */
  if (lua_isnil(L, P_INTO)) {
    lua_rawseti(L, P_RESULTS, i);
  } else {
    int target = push_row(L, P_ROWS, i);    /* rows target */
    lua_rawgeti(L, target - 1, 1);          /* rows target first */
    if (lua_istable(L, -1)) {
      lua_pushnil(L);
      while (lua_next(L, P_INTO)) {         /* ... column key */
        lua_pushvalue(L, -2);
        lua_rawget(L, target + 1);          /* ... column key value */
        lua_rawset(L, target);              /* ... column */
      }
    }
    lua_pop(L, 3);
  }
  lua_pushinteger(L, lua_tointeger(L, P_AFFECTED) + count);
  lua_replace(L, P_AFFECTED);
}

static int pipe_return(lua_State *L) {
  lua_pushvalue(L, P_RESULTS);
  lua_pushvalue(L, P_AFFECTED);
  return 2;
}

/* ---- the async path: one execute per row, yielding ---------------------- */

static int pipe_async_k(lua_State *L, int status, lua_KContext ctx);

static int pipe_async_run(lua_State *L) {
  for (;;) {
    lua_Integer i = lua_tointeger(L, P_NEXT), n = lua_tointeger(L, P_COUNT);
    if (i > n) return pipe_return(L);
    int nargs = push_execute_call(L, i, -1);
    lua_callk(L, nargs, 2, 0, pipe_async_k);
    store_result(L, i);
    lua_pushinteger(L, i + 1);
    lua_replace(L, P_NEXT);
  }
}

static int pipe_async_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(status);
  CARACAL_UNUSED(ctx);
  lua_Integer i = lua_tointeger(L, P_NEXT);
  store_result(L, i);
  lua_pushinteger(L, i + 1);
  lua_replace(L, P_NEXT);
  return pipe_async_run(L);
}

/* ---- the pipeline -------------------------------------------------------- */

/* What the to-be-closed guard needs to leave the connection usable when
 * a Lua error (a bad parameter, a decoding failure) interrupts us. */
typedef struct Pipe {
  caracal_Conn *conn; /* NULL once the pipeline was ended */
  PGresult *cur;      /* being decoded */
  PGresult *error;    /* the first failure */
  bool synced;        /* the Sync was sent */
  bool was_nonblocking;
  int sent, done;     /* statements sent; statements whose results were read */
  int ckeys;          /* with into: stack index of the keys by column position */
} Pipe;

/* Sent when a Lua error interrupts a batch before its Sync: the server
 * fails it, so the rows already sent are not kept (in a transaction, the
 * transaction is aborted, as by any failed statement). */
static const char PIPE_ABORT_SQL[] =
  "DO $caracal$BEGIN RAISE EXCEPTION 'the client stopped the pipeline (a Lua error)' "
  "USING ERRCODE = '57014'; END$caracal$";

/* End the pipeline: send the Sync if not yet sent (after PIPE_ABORT_SQL:
 * we were interrupted), read everything up to its answer, leave pipeline
 * mode. Errors are kept in p->error (the first) or, for the connection,
 * left to PQstatus. */
static void pipe_end(Pipe *p) {
  caracal_Conn *conn = p->conn;
  if (!conn) return;
  p->conn = NULL;
  PGconn *pg = conn->pg;
  if (!p->synced) {
    p->synced = true;
    if (PQsendQueryParams(pg, PIPE_ABORT_SQL, 0, NULL, NULL, NULL, NULL, 0)) p->sent++;
    if (!PQpipelineSync(pg)) goto out;
  }
  for (;;) {
    PGresult *r = PQgetResult(pg);
    if (!r) {
      if (PQstatus(pg) != CONNECTION_OK) break;
      /* The end of one statement's results; the Sync's answer follows the
       * last. Past that, a NULL means libpq has nothing more to give. */
      if (p->done >= p->sent) break;
      p->done++;
      continue;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    if ((st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR) && !p->error) p->error = r;
    else PQclear(r);
  }
out:
  PQexitPipelineMode(pg);
  if (p->was_nonblocking) PQsetnonblocking(pg, 1);
}

/* __close (a Lua error interrupted us): end the pipeline, free results.
 * __gc only frees: no I/O in a finalizer, and the guard is always closed
 * before it can be collected. */
static int pipe_guard_gc(lua_State *L) {
  Pipe *p = lua_touserdata(L, 1);
  PQclear(p->cur);
  PQclear(p->error);
  p->cur = p->error = NULL;
  return 0;
}

static int pipe_guard_close(lua_State *L) {
  pipe_end(lua_touserdata(L, 1));
  return pipe_guard_gc(L);
}

/* Store a statement's first row into rows[i] through the into map: the
 * key of each column is found once, from the first result (every result
 * of one statement has the same columns). */
static void pipe_store_into(lua_State *L, Pipe *p, const PGresult *r, lua_Integer i, bool binary) {
  int ncols = PQnfields(r);
  if (!p->ckeys) {
    lua_createtable(L, ncols, 0);
    for (int c = 0; c < ncols; c++) {
      if (lua_getfield(L, P_INTO, PQfname(r, c)) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushboolean(L, 0);
      }
      lua_rawseti(L, -2, c + 1);
    }
    p->ckeys = lua_gettop(L); /* stays until the pipeline ends */
  }
  int target = push_row(L, P_ROWS, i);
  if (PQntuples(r) > 0) {
    for (int c = 0; c < ncols; c++) {
      if (lua_rawgeti(L, p->ckeys, c + 1) == LUA_TBOOLEAN) {
        lua_pop(L, 1);
        continue;
      }
      res_push_value(L, r, 0, c, binary);   /* target key value */
      lua_rawset(L, target);
    }
  }
  lua_pop(L, 1);
}

/* Read the results libpq holds (all of them when block): each statement's
 * rows go to results[first + done] (or into its row), counts are summed. */
static void pipe_read(lua_State *L, Pipe *p, bool block, const Stmt *st, lua_Integer first,
                      lua_Integer *affected) {
  PGconn *pg = p->conn->pg;
  bool into = !lua_isnil(L, P_INTO);
  while (p->done < p->sent) {
    if (!block && PQisBusy(pg)) return;
    PGresult *r = PQgetResult(pg);
    if (!r) {
      if (PQstatus(pg) != CONNECTION_OK) return;
      p->done++;
      continue;
    }
    p->cur = r;
    switch (PQresultStatus(r)) {
      case PGRES_TUPLES_OK:
      case PGRES_COMMAND_OK: {
        if (!p->error) {
          if (into) {
            pipe_store_into(L, p, r, first + p->done, st->binary);
          } else {
            if (PQresultStatus(r) == PGRES_TUPLES_OK) {
              res_push_rows(L, r, st->binary);
            } else {
              lua_createtable(L, 0, 1);
              lua_newtable(L);
              lua_setfield(L, -2, "columns");
            }
            lua_rawseti(L, P_RESULTS, first + p->done);
          }
          const char *count = PQcmdTuples(r);
          if (count && *count) *affected += (lua_Integer)strtoll(count, NULL, 10);
        }
        break;
      }
      case PGRES_PIPELINE_ABORTED: /* not run: an earlier statement failed */
        break;
      default:
        if (!p->error) {
          p->error = r;
          p->cur = NULL;
        }
        break;
    }
    PQclear(p->cur);
    p->cur = NULL;
  }
}

/* Rows first..n of the statement through one pipeline. Leaves the stack
 * as it found it. */
static void pipe_run(lua_State *L, caracal_Conn *conn, const char *sql, const Stmt *st,
                     lua_Integer first, lua_Integer n, lua_Integer *affected) {
  PGconn *pg = conn->pg;
  Pipe *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, PIPE_GUARD_MT);
  int guard = lua_gettop(L);
  lua_toclose(L, guard);
  p->was_nonblocking = PQisnonblocking(pg) != 0;
  if (p->was_nonblocking) PQsetnonblocking(pg, 0);
  if (!PQenterPipelineMode(pg)) {
    if (p->was_nonblocking) PQsetnonblocking(pg, 1);
    raise_result(L, conn, NULL, sql);
  }
  p->conn = conn;
  int np = st->nparams;
  bool send_failed = false;
  luaL_checkstack(L, np + 8, "too many parameters");
  for (lua_Integer i = first; i <= n && !p->error; i++) {
    int top = lua_gettop(L);
    int row = push_row(L, P_ROWS, i);
    push_params(L, row, i, np);
    Params params;
    param_collect(L, row + 1, np, st->param_types, &params);
    int ok = PQsendQueryPrepared(pg, st->name, np, params.values, params.lengths, params.formats,
                                 st->binary ? 1 : 0);
    lua_settop(L, top);
    if (!ok) { /* libpq refused it (the connection failed): reported below */
      send_failed = true;
      break;
    }
    p->sent++;
    if (p->sent % PIPE_READ_EVERY == 0) {
      /* Read what has arrived, so results never pile up in memory. */
      if (!PQconsumeInput(pg)) break;
      pipe_read(L, p, false, st, first, affected);
    }
  }
  if (PQstatus(pg) == CONNECTION_OK && !p->error && !send_failed) {
    p->synced = true;
    if (PQpipelineSync(pg)) pipe_read(L, p, true, st, first, affected);
  }
  pipe_end(p);
  if (p->error || send_failed || PQstatus(pg) != CONNECTION_OK) {
    PGresult *err = p->error;
    p->error = NULL;
    raise_result(L, conn, err, sql);
  }
  lua_closeslot(L, guard);
  lua_settop(L, guard - 1);
}

/*
 * conn:execute_pipeline(sql, rows [, opts]) -> results, affected
 *
 * Runs sql once per row. A row is a list of parameters (nil holes are
 * NULL; row.n, when given, is the count) or, with opts.keys, any table:
 * parameter k is row[keys[k]]. results[i] is what execute would return
 * first for row i: its rows (with .columns). With opts.into (a map from
 * column name to key), the first row each statement returns is stored
 * into its own row table instead (row[key] = value; NULL clears it) and
 * results is rows itself. affected is the sum of the affected counts.
 *
 * Call it inside a transaction (a session does): the first failing row's
 * error is raised once the whole batch was read, and the transaction is
 * then aborted, so nothing of the batch is kept.
 */
static int bulk_execute_pipeline(lua_State *L) {
  caracal_Conn *conn = check_conn(L, P_CONN);
  const char *sql = luaL_checkstring(L, P_SQL);
  luaL_checktype(L, P_ROWS, LUA_TTABLE);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  lua_Integer n = luaL_len(L, P_ROWS);
  int opts = 4;
  lua_pushnil(L);
  lua_pushnil(L);                            /* opts keys into */
  if (lua_istable(L, opts)) {
    if (lua_getfield(L, opts, "keys") != LUA_TNIL) {
      luaL_argexpected(L, lua_istable(L, -1), 3, "opts.keys as a table");
      lua_replace(L, opts + 1);
    } else {
      lua_pop(L, 1);
    }
    if (lua_getfield(L, opts, "into") != LUA_TNIL) {
      luaL_argexpected(L, lua_istable(L, -1), 3, "opts.into as a table");
      lua_replace(L, opts + 2);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_remove(L, opts);                       /* P_KEYS P_INTO */
  if (lua_isnil(L, P_INTO)) lua_createtable(L, n > 0 && n < 1 << 24 ? (int)n : 0, 0);
  else lua_pushvalue(L, P_ROWS);             /* P_RESULTS */
  lua_pushinteger(L, 0);                     /* P_AFFECTED */
  if (n <= 0) return pipe_return(L);
  check_ready(L, conn, sql);
  lua_pushinteger(L, 1);                     /* P_NEXT */
  lua_pushinteger(L, n);                     /* P_COUNT */
  if (async_can_yield(L)) return pipe_async_run(L);
  /* The statement's parameter count, preparing it if needed. */
  Stmt *st = stmt_find(conn, sql);
  if (!st) {
    PGresult *failed;
    if (!(st = stmt_get(conn, sql, &failed))) raise_result(L, conn, failed, sql);
  }
  int np = st->nparams;
  /* Row 1 through execute: it re-prepares a statement DDL made suspect
   * and notes what the statement does to the session. */
  int nargs = push_execute_call(L, 1, np);
  lua_call(L, nargs, 2);
  store_result(L, 1);
  if (n == 1) return pipe_return(L);
  /* execute may have replaced the cached statement: look it up again. */
  if (!(st = stmt_find(conn, sql))) {
    PGresult *failed;
    if (!(st = stmt_get(conn, sql, &failed))) raise_result(L, conn, failed, sql);
  }
  lua_Integer affected = lua_tointeger(L, P_AFFECTED);
  pipe_run(L, conn, sql, st, 2, n, &affected);
  lua_pushinteger(L, affected);
  lua_replace(L, P_AFFECTED);
  return pipe_return(L);
}

/* ---- COPY FROM STDIN ----------------------------------------------------- */

/* The state of one copy_in call, for its to-be-closed guard: a COPY that a
 * Lua error interrupts is ended with CopyFail so the connection is usable. */
typedef struct Copy {
  caracal_Conn *conn; /* NULL once the COPY was ended */
  bool was_nonblocking;
  char *buf;
  size_t len, cap;
} Copy;

static void copy_fail(Copy *c, const char *why) {
  caracal_Conn *conn = c->conn;
  if (!conn) return;
  c->conn = NULL;
  PGconn *pg = conn->pg;
  /* Fails when the server already ended the COPY: its error is read (and
   * dropped: the caller is raising its own) all the same. */
  PQputCopyEnd(pg, why);
  PGresult *r;
  while ((r = PQgetResult(pg)) != NULL) {
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) break;
  }
  if (c->was_nonblocking) PQsetnonblocking(pg, 1);
}

static int copy_guard_gc(lua_State *L) {
  Copy *c = lua_touserdata(L, 1);
  free(c->buf);
  c->buf = NULL;
  c->len = c->cap = 0;
  return 0;
}

/* __close: a Lua error interrupted the COPY (or it ended normally, and
 * then there is nothing to do but free). */
static int copy_guard_close(lua_State *L) {
  copy_fail(lua_touserdata(L, 1), "the client stopped the COPY (a Lua error while producing the rows)");
  return copy_guard_gc(L);
}

static bool copy_reserve(Copy *c, size_t more) {
  if (c->len + more <= c->cap) return true;
  size_t cap = c->cap ? c->cap : COPY_CHUNK * 2;
  while (cap < c->len + more) cap *= 2;
  char *nb = realloc(c->buf, cap);
  if (!nb) return false;
  c->buf = nb;
  c->cap = cap;
  return true;
}

/* Append one value in COPY text format: backslash, tab, newline and
 * carriage return escaped; bytea (sent as raw bytes by params.c) in hex. */
static bool copy_put_value(Copy *c, const char *v, size_t len, int format) {
  static const char hex[] = "0123456789abcdef";
  if (format == 1) {
    if (!copy_reserve(c, 3 + 2 * len)) return false;
    char *o = c->buf + c->len;
    *o++ = '\\';
    *o++ = '\\';
    *o++ = 'x';
    for (size_t i = 0; i < len; i++) {
      unsigned char b = (unsigned char)v[i];
      *o++ = hex[b >> 4];
      *o++ = hex[b & 15];
    }
    c->len = (size_t)(o - c->buf);
    return true;
  }
  if (!copy_reserve(c, 2 * len)) return false;
  char *o = c->buf + c->len;
  for (size_t i = 0; i < len; i++) {
    char ch = v[i];
    switch (ch) {
      case '\\': *o++ = '\\'; *o++ = '\\'; break;
      case '\t': *o++ = '\\'; *o++ = 't'; break;
      case '\n': *o++ = '\\'; *o++ = 'n'; break;
      case '\r': *o++ = '\\'; *o++ = 'r'; break;
      default: *o++ = ch;
    }
  }
  c->len = (size_t)(o - c->buf);
  return true;
}

/* Hand the buffer to libpq; false when the COPY is over (the server
 * failed it, or the connection did). */
static bool copy_send(Copy *c) {
  if (c->len == 0) return true;
  int rc = PQputCopyData(c->conn->pg, c->buf, (int)c->len);
  c->len = 0;
  return rc == 1;
}

/* Read the results after the COPY ended: the row count, or raise. */
static lua_Integer copy_finish(lua_State *L, caracal_Conn *conn, const char *sql) {
  PGconn *pg = conn->pg;
  PGresult *ok = NULL, *err = NULL, *r;
  while ((r = PQgetResult(pg)) != NULL) {
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK && !ok) {
      ok = r;
    } else if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      PQclear(r); /* cannot happen after PQputCopyEnd; never loop on it */
      break;
    } else if (st != PGRES_COMMAND_OK && !err) {
      err = r;
    } else {
      PQclear(r);
    }
  }
  if (err || !ok || PQstatus(pg) != CONNECTION_OK) {
    PQclear(ok);
    raise_result(L, conn, err, sql);
  }
  const char *count = PQcmdTuples(ok);
  lua_Integer n = count && *count ? (lua_Integer)strtoll(count, NULL, 10) : 0;
  PQclear(ok);
  return n;
}

/* Encode and send the rows of the list at idx (keys at 5, as in copy_in);
 * false when the server ended the COPY (its error is read later). */
static bool copy_rows(lua_State *L, Copy *c, int list, int ncols, const Oid *types) {
  lua_Integer n = luaL_len(L, list);
  bool positional = lua_isnil(L, 5);
  for (lua_Integer i = 1; i <= n; i++) {
    int top = lua_gettop(L);
    int row = push_row(L, list, i);
    for (int k = 1; k <= ncols; k++) {
      if (positional) {
        lua_rawgeti(L, row, k);
      } else {
        lua_rawgeti(L, 5, k);               /* ... key */
        lua_rawget(L, row);                 /* ... value */
      }
    }
    Params p;
    param_collect(L, row + 1, ncols, types, &p);
    /* A row: values, tabs between, \N for NULL, a newline at the end. */
    for (int k = 0; k < ncols; k++) {
      if (!copy_reserve(c, 4)) luaL_error(L, "out of memory encoding COPY data");
      if (k > 0) c->buf[c->len++] = '\t';
      if (!p.values[k]) {
        c->buf[c->len++] = '\\';
        c->buf[c->len++] = 'N';
      } else if (!copy_put_value(c, p.values[k], (size_t)p.lengths[k], p.formats[k])) {
        luaL_error(L, "out of memory encoding COPY data");
      }
    }
    if (!copy_reserve(c, 1)) luaL_error(L, "out of memory encoding COPY data");
    c->buf[c->len++] = '\n';
    lua_settop(L, top);
    if (c->len >= COPY_CHUNK && !copy_send(c)) return false;
  }
  return true;
}

/*
 * conn:copy_in(sql, rows [, opts]) -> count
 *
 * sql is a COPY ... FROM STDIN in text format (the default). rows is a
 * list of rows, or a function returning the next list (nil at the end),
 * called between batches; each value is row[key] for key in opts.keys (default:
 * positions 1..the COPY's column count), converted exactly as a parameter
 * of that type would be (opts.types: type OIDs per column, so tables go as
 * JSON to jsonb and floats are refused for numeric). nil is NULL. The data
 * is streamed in chunks; the COPY's row count is returned. A server error
 * (a constraint, a bad value) is raised once the COPY ended; a Lua error
 * while encoding (a value that cannot be sent) ends the COPY with CopyFail
 * first. Either way the COPY wrote nothing.
 */
static int bulk_copy_in(lua_State *L) {
  caracal_Conn *conn = check_conn(L, 1);
  const char *sql = luaL_checkstring(L, 2);
  luaL_argexpected(L, lua_istable(L, 3) || lua_isfunction(L, 3), 3, "table or function");
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  /* 5: the keys (or nil: positions), 6: the type OIDs (a userdata array,
   * or nil: unknown) */
  int nkeys = -1, ntypes = -1;
  if (lua_istable(L, 4) && lua_getfield(L, 4, "keys") == LUA_TTABLE) {
    nkeys = (int)luaL_len(L, 5);
  } else {
    lua_settop(L, 4);
    lua_pushnil(L);
  }
  Oid *types = NULL;
  if (lua_istable(L, 4) && lua_getfield(L, 4, "types") == LUA_TTABLE) {
    ntypes = (int)luaL_len(L, 6);
    types = lua_newuserdatauv(L, (size_t)(ntypes > 0 ? ntypes : 1) * sizeof *types, 0);
    for (int k = 0; k < ntypes; k++) {
      lua_rawgeti(L, 6, k + 1);
      types[k] = (Oid)luaL_optinteger(L, -1, 0);
      lua_pop(L, 1);
    }
    lua_replace(L, 6);
  } else {
    lua_settop(L, 5);
    lua_pushnil(L);
  }
  check_ready(L, conn, sql);
  PGconn *pg = conn->pg;

  Copy *c = lua_newuserdatauv(L, sizeof *c, 0); /* 7: the guard */
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, COPY_GUARD_MT);
  lua_toclose(L, 7);
  c->was_nonblocking = PQisnonblocking(pg) != 0;
  if (c->was_nonblocking) PQsetnonblocking(pg, 0);

  PGresult *r = PQexec(pg, sql);
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    if (c->was_nonblocking) PQsetnonblocking(pg, 1);
    if (!r || PQresultStatus(r) == PGRES_FATAL_ERROR) raise_result(L, conn, r, sql);
    PQclear(r);
    return luaL_error(L, "copy_in: the statement is not a COPY ... FROM STDIN");
  }
  int ncols = PQnfields(r);
  bool binary_format = PQbinaryTuples(r) != 0;
  PQclear(r);
  c->conn = conn; /* from here a Lua error ends the COPY with CopyFail */
  if (binary_format) return luaL_error(L, "copy_in: only COPY in text format is supported");
  if (nkeys >= 0 && nkeys != ncols)
    return luaL_error(L, "copy_in: the COPY has %d columns, got %d keys", ncols, nkeys);
  if (ntypes >= 0 && ntypes != ncols)
    return luaL_error(L, "copy_in: the COPY has %d columns, got %d types", ncols, ntypes);
  luaL_checkstack(L, ncols + 8, "too many columns");
  if (lua_isfunction(L, 3)) {
    /* Batches from the function until it returns nil; each is encoded
     * and sent before the next is asked for, so the function's work (a
     * caller validating the next rows) overlaps with the server's. */
    for (;;) {
      lua_pushvalue(L, 3);
      lua_call(L, 0, 1);                    /* batch */
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        break;
      }
      if (!lua_istable(L, -1))
        return luaL_error(L, "copy_in: the row source returned a %s (a list of rows or nil expected)",
                          luaL_typename(L, -1));
      bool more = copy_rows(L, c, lua_gettop(L), ncols, types);
      lua_pop(L, 1);
      if (!more) break;
    }
  } else {
    copy_rows(L, c, 3, ncols, types);
  }
  /* The rest of the data, then CopyDone. When the server has already
   * failed the COPY these fail, and its error is read by copy_finish. */
  bool sent = copy_send(c);
  c->conn = NULL;
  if (sent) PQputCopyEnd(pg, NULL);
  if (c->was_nonblocking) PQsetnonblocking(pg, 1);
  lua_pushinteger(L, copy_finish(L, conn, sql));
  return 1;
}

static const luaL_Reg bulk_methods[] = {
  {"execute_pipeline", bulk_execute_pipeline},
  {"copy_in", bulk_copy_in},
  {NULL, NULL}
};

void lbulk_open(lua_State *L) {
  luaL_newmetatable(L, PIPE_GUARD_MT);
  lua_pushcfunction(L, pipe_guard_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, pipe_guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, COPY_GUARD_MT);
  lua_pushcfunction(L, copy_guard_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, copy_guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  /* Into the methods lconn_open registered. */
  luaL_getmetatable(L, CARACAL_CONN_MT);
  if (lua_getfield(L, -1, "__index") == LUA_TTABLE) luaL_setfuncs(L, bulk_methods, 0);
  lua_pop(L, 2);
}
