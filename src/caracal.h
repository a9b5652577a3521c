/*
 * caracal.h: the public C API of Caracal.
 *
 * Caracal gives Lua 5.4 scripts a PostgreSQL data layer: a thread-safe
 * connection pool, typed values (exact decimals, instants, uuids, JSON),
 * sessions with transaction scopes, models and migrations. This header is
 * the only one an embedding host includes; link with -lcaracal (see the
 * pkg-config file `caracal.pc`).
 *
 * Thread rules
 *   - A caracal_Pool may be shared by any number of threads. Every pool
 *     function is thread-safe.
 *   - A caracal_Conn belongs to the thread that checked it out until it is
 *     checked in; never use one from two threads at once.
 *   - A lua_State belongs to one thread (Lua's own rule). Give each thread
 *     its own state and share the pool between them with caracal_Options.pool.
 *
 * Errors: functions that can fail return CARACAL_OK (0) or a negative
 * caracal_Status and write a message into the caller's buffer. No function
 * calls exit() and no message ever contains a password.
 */
#ifndef CARACAL_H
#define CARACAL_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CARACAL_VERSION "0.1.0"

typedef enum caracal_Status {
  CARACAL_OK = 0,
  CARACAL_EINVAL = -1,   /* bad argument or configuration */
  CARACAL_ETIMEOUT = -2, /* pool checkout waited pool_timeout */
  CARACAL_ECONNECT = -3, /* the server could not be reached */
  CARACAL_ECLOSED = -4,  /* the pool was closed */
  CARACAL_ENOMEM = -5
} caracal_Status;

/* Log levels passed to a host logger. */
enum { CARACAL_LOG_DEBUG, CARACAL_LOG_INFO, CARACAL_LOG_WARN, CARACAL_LOG_ERROR };

typedef void (*caracal_LogFn)(void *ud, int level, const char *message);
/* Monotonic clock in seconds; tests inject one to move time forward. */
typedef double (*caracal_ClockFn)(void *ud);

/* What a returned connection gets before the next borrower sees it. */
typedef enum caracal_Reset {
  CARACAL_RESET_AUTO = 0, /* ROLLBACK when in a transaction; full reset when
                             the borrower changed session state */
  CARACAL_RESET_ALWAYS,   /* full reset on every return */
  CARACAL_RESET_NONE      /* ROLLBACK when in a transaction, nothing else */
} caracal_Reset;

/*
 * Pool configuration. keywords/values are libpq connection keywords
 * (host, port, dbname, user, password, ...), NULL-terminated, passed to
 * PQconnectdbParams with expand_dbname = 0 so a database name is never
 * parsed as a connection string. The pool copies everything it keeps.
 */
typedef struct caracal_PoolConfig {
  const char *const *keywords;
  const char *const *values;
  int pool_size;         /* connections kept open, >= 1 (default 10) */
  int max_overflow;      /* extra connections opened on demand, >= 0, or -1
                            for no limit (default 5) */
  double pool_timeout;   /* seconds a checkout waits (default 30) */
  double pool_recycle;   /* connections older than this are replaced at
                            checkout; <= 0 never (default 3600) */
  double recycle_jitter; /* fraction of pool_recycle taken off at random per
                            connection so they do not all expire at once */
  int pre_ping;          /* round trip before handing out an idle connection */
  caracal_Reset reset_on_return;
  caracal_LogFn log;     /* optional; receives redacted messages */
  void *log_ud;
  caracal_ClockFn clock; /* optional; CLOCK_MONOTONIC when NULL */
  void *clock_ud;
} caracal_PoolConfig;

/* Defaults of the seed: 10 + 5, 30 s, 3600 s. */
void caracal_pool_config_init(caracal_PoolConfig *cfg);

typedef struct caracal_Pool caracal_Pool;
typedef struct caracal_Conn caracal_Conn;

/*
 * Pool counters. size is pool_size. checked_in are idle connections,
 * checked_out are in use, connecting are being opened. total = checked_in +
 * checked_out + connecting (every connection that exists or is being
 * made). overflow = max(0, total - size): connections beyond pool_size
 * that are open now; it is never negative (SQLAlchemy reports a signed
 * counter that starts at -size; ours is the plain count).
 */
typedef struct caracal_PoolStatus {
  int size, checked_in, checked_out, connecting, overflow, total;
  int max_overflow, waiting;
  uint64_t connects, discards, timeouts, recycles;
} caracal_PoolStatus;

/* Create a pool (no connection is opened yet). One reference is held. */
int caracal_pool_new(const caracal_PoolConfig *cfg, caracal_Pool **out, char *err, size_t errlen);
/* Reference counting, for sharing a pool between owners and threads. */
caracal_Pool *caracal_pool_retain(caracal_Pool *pool);
void caracal_pool_release(caracal_Pool *pool);

/*
 * Check out a connection, waiting up to pool_timeout. holder is a label
 * ("script.lua:12") shown in the timeout message that names who holds the
 * connections; it may be NULL. The connection is ready (CONNECTION_OK,
 * transaction idle).
 */
int caracal_pool_checkout(caracal_Pool *pool, const char *holder, caracal_Conn **out, char *err,
                          size_t errlen);
/* Return a connection. It is reset (or closed when it cannot be) first.
 * Checking in twice only logs a warning. */
void caracal_pool_checkin(caracal_Conn *conn);
/* Return a connection without any round trip (safe from a finalizer): a
 * connection that needs a reset is parked and reset by the next checkout. */
void caracal_pool_checkin_deferred(caracal_Conn *conn);
void caracal_pool_status(caracal_Pool *pool, caracal_PoolStatus *st);
/* 1 when a connection can be checked out and answers SELECT 1, else 0. */
int caracal_pool_health_check(caracal_Pool *pool);
/* Close idle connections now and in-use ones when they come back; later
 * checkouts fail with CARACAL_ECLOSED. Idempotent. */
void caracal_pool_close(caracal_Pool *pool);
/* Mark every connection opened until now as stale: each is replaced at its
 * next checkout (done by itself when a connection is found dead). */
void caracal_pool_invalidate_all(caracal_Pool *pool);

/* The libpq connection inside a checked-out connection. */
PGconn *caracal_conn_pg(caracal_Conn *conn);
/* Do not reuse this connection: it is closed when checked in. */
void caracal_conn_invalidate(caracal_Conn *conn);
/* Tell the pool the borrower changed session state (SET, LISTEN, ...). */
void caracal_conn_mark_dirty(caracal_Conn *conn);

/*
 * Lua. caracal_openlibs loads the Caracal modules into a state the host
 * owns: the C core as package.loaded["caracal.core"], the Lua layer on
 * package.path, and the global `caracal`. Options may be NULL.
 */
typedef struct caracal_Options {
  const char *lua_dir;        /* folder holding caracal/db.lua etc.; NULL: built-in */
  const char *migrations_dir; /* NULL: built-in path */
  caracal_Pool *pool;         /* optional pool shared with other states */
  caracal_LogFn log;
  void *log_ud;
} caracal_Options;

int caracal_openlibs(lua_State *L, const caracal_Options *options);
/* Close what caracal_openlibs opened in L (connections go back to the
 * pool, the state's reference to a shared pool is dropped). */
void caracal_close(lua_State *L);

/* Replace the password (raw and percent-encoded) and any password=...
 * or user:secret@ parts of msg with ***. Returns bytes written (out is
 * always NUL-terminated when outlen > 0). */
size_t caracal_redact(const char *msg, const char *password, char *out, size_t outlen);

#ifdef __cplusplus
}
#endif
#endif /* CARACAL_H */
