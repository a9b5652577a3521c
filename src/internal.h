/*
 * internal.h: what the C files of Caracal share with each other and with
 * nobody else. Cross-file helpers carry a short prefix naming their file:
 * pool_ (pool.c), url_ (url.c), dec_ (decimal.c), inst_ (instant.c),
 * uuid_ (uuid.c), json_ (json.c), err_ (error.c), res_ (result.c),
 * param_ (params.c), stmt_ (stmtcache.c), lconn_ (lconn.c), async_ (async.c).
 */
#ifndef CARACAL_INTERNAL_H
#define CARACAL_INTERNAL_H

#include <stdint.h>
#include <stdbool.h>
#include <pthread.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "caracal.h"

#define CARACAL_UNUSED(x) ((void)(x))

/* Metatable names, so Lua's own argument errors name our types. */
#define CARACAL_POOL_MT "caracal.Pool"
#define CARACAL_CONN_MT "caracal.Connection"
#define CARACAL_ERROR_MT "caracal.Error"
#define CARACAL_DECIMAL_MT "caracal.Decimal"
#define CARACAL_INSTANT_MT "caracal.Instant"

/* ---- pool.c / conn internals ------------------------------------------ */

typedef struct StmtCache StmtCache;

struct caracal_Conn {
  PGconn *pg;
  caracal_Pool *pool;
  double created_at;     /* pool clock */
  double expires_at;     /* created_at + recycle - jitter; 0 = never */
  double checked_out_at;
  struct caracal_Conn *prev, *next; /* in-use list, for the timeout message */
  struct caracal_Conn *next_parked; /* returned by a finalizer, awaiting reset */
  StmtCache *stmts;      /* prepared statements on this PGconn (stmtcache.c) */
  unsigned long stmt_seq; /* last statement number used on this PGconn */
  /* Server notices (NOTICE, WARNING) buffered for the borrower: libpq
   * calls the receiver in the middle of a result, where we must not raise
   * or print. Oldest dropped beyond CARACAL_MAX_NOTICES. */
  char *notices[16];
  int nnotices;
  bool in_use;
  bool parked;
  bool invalid;          /* close instead of reusing */
  bool dirty;            /* session state changed: full reset on return */
  bool pooled;           /* behind a transaction pooler (PgBouncer pool_mode =
                            transaction): statements are prepared unnamed and
                            nothing relies on session state (lconn.c) */
  char holder[160];
};

#define CARACAL_MAX_NOTICES 16
/* Free the buffered notices of a connection. */
void pool_clear_notices(caracal_Conn *c);

/* ---- stmtcache.c: prepared statements per connection ------------------- */

/* A statement prepared on one connection, with what Describe told us. */
typedef struct Stmt {
  char name[24];
  char *sql;
  int nparams;
  Oid *param_types;
  bool binary; /* every result column has a binary decoder */
  struct Stmt *next, *lru_prev, *lru_next;
  unsigned hash;
} Stmt;

/* Find or prepare (PQprepare + PQdescribePrepared) the statement for sql.
 * On a server error returns NULL and *failed holds the result (caller
 * clears it); on a lost connection NULL with *failed NULL. */
Stmt *stmt_get(caracal_Conn *c, const char *sql, PGresult **failed);
/* The steps of stmt_get, for lconn.c's state machine, which sends each
 * command itself so it can yield between them: find a cached statement
 * (and mark it recently used); the statement to DEALLOCATE before adding
 * one to a full cache (NULL: not full); a new statement with a fresh name,
 * not in the cache yet; add it once Describe answered (false: out of
 * memory, the caller discards it); free one that never made it in. */
Stmt *stmt_find(caracal_Conn *c, const char *sql);
Stmt *stmt_victim(caracal_Conn *c);
Stmt *stmt_new(caracal_Conn *c, const char *sql);
bool stmt_add(caracal_Conn *c, Stmt *s, const PGresult *desc);
void stmt_discard(Stmt *s);
/* On a pooled connection (conn->pooled) no statement is named: the cache
 * only remembers what Describe said, stmt_new gives the name "" and
 * stmt_get prepares and describes the unnamed statement in one pipeline
 * (one Sync, so a transaction pooler cannot switch server connections in
 * between); the statement is then run with PQsendQueryParams. */
/* Forget one statement (the server rejected it as stale) or all of them
 * (the server dropped them: DISCARD ALL, DEALLOCATE ALL). */
void stmt_forget(caracal_Conn *c, Stmt *s);
void stmt_forget_all(caracal_Conn *c);
void stmt_cache_free(StmtCache *cache);

/* ---- url.c: connection URLs and secrets -------------------------------- */

/* One libpq keyword/value pair parsed from a URL. */
typedef struct UrlParam {
  char *key;
  char *value;
} UrlParam;

/*
 * Parse a postgresql:// or postgres:// URL into libpq keywords (host,
 * port, dbname, user, password and every query parameter as given).
 * Percent-escapes are decoded; multi-host lists (h1:p1,h2:p2) and
 * bracketed IPv6 hosts are accepted. On error returns -1 and writes a
 * message into err that never contains the password. The caller frees
 * the result with url_free.
 */
int url_parse(const char *url, UrlParam **out, int *count, char *err, size_t errlen);
void url_free(UrlParam *params, int count);

/* ---- decimal.c: exact decimals ------------------------------------------ */

/* Push a Decimal parsed from text ("-12.340", "1e-3", NUMERIC output).
 * Raises a Lua error naming the value when it is not a number. */
void dec_push_string(lua_State *L, const char *s, size_t len);
/* Push a Decimal decoded from PostgreSQL's binary NUMERIC format; returns
 * 0, or -1 when buf is malformed (nothing pushed). NaN is rejected. */
int dec_push_pgbinary(lua_State *L, const char *buf, int len);
/* Is the value at idx a Decimal? */
bool dec_is(lua_State *L, int idx);
/* Push the exact text of the Decimal at idx (as tostring); returns it. */
const char *dec_push_text(lua_State *L, int idx, size_t *len);
/* Does the Decimal at idx fit NUMERIC(precision, scale) without rounding
 * away digits beyond the scale? 1 yes, 0 no (why gets the reason). */
int dec_fits(lua_State *L, int idx, int precision, int scale, char *why, size_t whylen);
void dec_open(lua_State *L); /* adds Decimal functions to the table on top */

/* ---- instant.c: UTC instants, microsecond precision --------------------- */

/* Microseconds since 1970-01-01T00:00:00Z. */
void inst_push(lua_State *L, int64_t micros);
bool inst_is(lua_State *L, int idx);
int64_t inst_get(lua_State *L, int idx); /* raises when not an Instant */
/* Parse ISO 8601 ("2024-01-02T03:04:05.123456Z", "+02:00" offsets, a space
 * instead of T, no offset meaning UTC, PostgreSQL's "+02" form). 0 on
 * success, -1 on a malformed or out-of-range value. */
int inst_parse(const char *s, size_t len, int64_t *out);
/* Format for PostgreSQL parameters: "2024-01-02 03:04:05.123456+00". */
size_t inst_format_pg(int64_t micros, char *buf, size_t buflen);
/* Days since 1970-01-01 to a civil (proleptic Gregorian) date. */
void inst_civil_from_days(int64_t days, int64_t *year, int *month, int *day);
/* PostgreSQL's binary timestamp epoch (2000-01-01) in Unix microseconds. */
#define INST_PG_EPOCH_US INT64_C(946684800000000)
void inst_open(lua_State *L);

/* ---- uuid.c ------------------------------------------------------------- */

/* Normalise a UUID in any usual form (any case, braces, urn:uuid:, no
 * hyphens) to 36 lowercase hyphenated characters plus NUL. 0 ok, -1 bad. */
int uuid_normalize(const char *s, size_t len, char out[37]);
/* Format 16 raw bytes (PostgreSQL's binary uuid) as lowercase hyphenated. */
void uuid_format(const unsigned char raw[16], char out[37]);
void uuid_open(lua_State *L);

/* ---- json.c: JSONB through lua-cjson ----------------------------------- */

/* Decode JSON text and push the value (arrays keep an array marker so an
 * empty array encodes back as []); raises on bad JSON. */
void json_push_decoded(lua_State *L, const char *s, size_t len);
/* Encode the value at idx as JSON; pushes and returns the text. */
const char *json_push_encoded(lua_State *L, int idx, size_t *len);
/* Give the table at idx the array marker (encodes as [] even when empty). */
void json_array_mark(lua_State *L, int idx);
void json_open(lua_State *L);

/* ---- error.c: structured database errors ------------------------------- */

/* Push a caracal.Error built from a failed result (or, when res is NULL,
 * from the connection's error message: a lost connection). sql may be
 * NULL. The message is redacted with the connection's password. */
void err_push_result(lua_State *L, PGconn *pg, const PGresult *res, const char *sql);
/* Push a caracal.Error with only a message and a SQLSTATE-like code. */
void err_push_simple(lua_State *L, const char *sqlstate, const char *message);
/* Add chunk:line of the calling Lua code to the error on top of stack. */
void err_set_where(lua_State *L, int level);
void err_open(lua_State *L);

/* ---- result.c / params.c ------------------------------------------------ */

/* Push a result's rows as an array of tables keyed by column name. */
void res_push_rows(lua_State *L, const PGresult *res, bool binary);
/* Push one value of a result, decoded as res_push_rows does (nil for
 * NULL). */
void res_push_value(lua_State *L, const PGresult *res, int row, int col, bool binary);
/* Does every column of the described statement have a binary decoder? */
bool res_binary_ok(const PGresult *desc);

/* Convert the Lua values at [first, first+n) into text parameters.
 * Strings are kept as they are (a NUL byte is an error: text cannot hold
 * it), integers exactly, floats with all their digits, booleans as t/f,
 * Decimals, Instants exactly, tables as JSON. nil is NULL. Raises a Lua
 * error naming the parameter on a value it cannot send. */
/* Parameters one statement may take: libpq reads a ParameterDescription
 * of at most 30000 bytes, 4 per parameter (the protocol's own limit,
 * 65535, is never reached). */
#define CARACAL_MAX_PARAMS 7498

typedef struct Params {
  int n;
  const char **values;
  int *lengths;
  int *formats;
} Params;
/* types: the statement's parameter types from Describe (NULL: unknown),
 * used to send tables as JSON or arrays, bytea in binary, and to refuse a
 * float where a NUMERIC is expected. Storage lives on the Lua stack. */
void param_collect(lua_State *L, int first, int n, const Oid *types, Params *p);

/* ---- lconn.c / lpool.c: Lua bindings ------------------------------------ */

void lpool_open(lua_State *L);
void lconn_open(lua_State *L);
/* Push a Lua handle to an existing pool (takes a new reference). */
void lpool_push(lua_State *L, caracal_Pool *pool);
caracal_Pool *lpool_get(lua_State *L, int idx);
/* Push a handle owning a checked-out connection; the value at pool_idx
 * (the pool handle) is kept alive as long as the connection. */
void lconn_push(lua_State *L, caracal_Conn *conn, int pool_idx);

/* ---- crypto.c: SHA-256, ECDSA P-256, Merkle trees (authority ledger) ---- */

/* Adds sha256, sha256_hex, hex_encode, hex_decode, ec_generate,
 * ec_public_from_private, ec_sign, ec_verify, merkle_leaf, merkle_root and
 * merkle_proof to the table on top. */
void crypto_open(lua_State *L);

/* ==== async.c: non-blocking mode ========================================
 * (Added with the embedding API: tasks, caracal_poll, LISTEN/NOTIFY.)
 *
 * A task is a coroutine started by caracal_spawn / core.spawn. In a state
 * in non-blocking mode, a task that would wait for the server or for a
 * pool connection yields instead (lua_yieldk with a continuation) after
 * registering what it waits for; caracal_poll resumes it when that is
 * ready. Anything else (the main thread, a coroutine the user made, a
 * call through a C boundary) blocks as before.
 */

/* May the running code yield to caracal_poll? (a task, yieldable here,
 * in non-blocking mode, state not closed) */
bool async_can_yield(lua_State *L);
/* Yield the running task until the connection in *slot has input to read
 * (or, while libpq still holds unsent output, until it can be flushed); on
 * resume k runs with ctx. slot is the handle's own pointer (anchored on
 * the task's stack): if Lua code releases the handle meanwhile, the wait
 * ends without touching a connection that is back in the pool. Call as
 * `return async_yield_conn(...)` (it does not return). */
int async_yield_conn(lua_State *L, caracal_Conn **slot, lua_KContext ctx, lua_KFunction k);
/* Yield the running task until pool may have a connection to hand out
 * (or a retry interval passed, so the caller can count its timeout). */
int async_yield_pool(lua_State *L, caracal_Pool *pool, lua_KContext ctx, lua_KFunction k);
/* CLOCK_MONOTONIC in seconds. */
double async_now(void);
/* Adds spawn, poll, sleep, listen, ... to the core table on top. */
void async_open(lua_State *L);
/* caracal_close's first step: cancel what is in flight, give back every
 * connection the state holds (rolled back), drop the tasks. */
void async_close(lua_State *L);

/* lconn.c helpers for the above. Give every connection handle made in L
 * back to its pool now (reset, rolled back). */
void lconn_release_all(lua_State *L);
/* The connection of the handle at idx (NULL when released); raises when
 * the value is not a caracal.Connection. */
caracal_Conn *lconn_get(lua_State *L, int idx);
/* Give the handle's connection back without any round trip (parked for
 * reset at the next checkout, like __gc). */
void lconn_release_deferred(lua_State *L, int idx);
/* ==== end async.c ======================================================= */

/* ==== lbulk.c: bulk paths of a connection ===============================
 * (Added with the fast paths: pipelined flush, COPY.) Adds
 * execute_pipeline and copy_in to the methods of "caracal.Connection";
 * call after lconn_open. */
void lbulk_open(lua_State *L);
/* ==== end lbulk.c ======================================================= */

/* Registry keys (addresses of these objects) for per-state context. */
extern const char CARACAL_REG_JSON;    /* the private cjson instance */
extern const char CARACAL_REG_OPTIONS; /* caracal_Options copy */

#endif /* CARACAL_INTERNAL_H */
