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
 *     Every function taking a lua_State (caracal_openlibs, caracal_poll,
 *     caracal_spawn, caracal_event_fd, caracal_close, ...) is called only by
 *     the thread that owns that state. Caracal keeps no global state: two
 *     states in two threads share nothing but the pool they are given.
 *
 * Memory: Caracal's Lua-side allocations (rows, values, coroutines, its
 * bookkeeping) go through the state's allocator, so a state made with
 * lua_newstate(your_alloc, ud) is fully accounted. The pool, connections
 * and prepared-statement caches are C objects allocated with malloc, and
 * libpq (and OpenSSL under it) allocate with malloc too.
 *
 * Non-blocking mode (for frame- or tick-driven hosts)
 *   With caracal_Options.nonblocking (or core.set_nonblocking(true) from
 *   Lua), code running in a task -- a coroutine started by caracal_spawn
 *   or core.spawn -- never waits: a query, or a checkout from an exhausted
 *   pool, yields the task, and caracal_poll, called by the host every
 *   frame, resumes it when its result is ready. Sessions, scopes,
 *   transactions and models work unchanged, since all of them go through
 *   the same connection calls. The main thread, and coroutines the user
 *   creates (iterators, generators), keep blocking: they do not expect
 *   Caracal's yields. Two things still block, and hosts plan for them:
 *   opening a brand-new connection (libpq connects synchronously; call
 *   caracal_pool_prewarm at startup) and resetting a returned connection
 *   that needs it (a ROLLBACK round trip).
 *
 *     caracal_pool_prewarm(pool, 4, err, sizeof err);
 *     opts.pool = pool; opts.nonblocking = 1; opts.on_error = report;
 *     caracal_openlibs(L, &opts);
 *     for (;;) {                                  // the host's frame
 *       run_systems(L);                           // Lua may core.spawn(fn)
 *       caracal_poll(L, 0.002);                   // at most ~2 ms of it
 *       render(); wait_for_next_frame();          // or wait on caracal_event_fd
 *     }
 *     caracal_close(L); lua_close(L); caracal_pool_release(pool);
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
  CARACAL_ENOMEM = -5,
  CARACAL_EAGAIN = -6,   /* would wait: try again later (non-blocking calls) */
  CARACAL_ELUA = -7,     /* a Lua error (reported to the host's on_error) */
  CARACAL_ESCHEMA = -8   /* the database schema is not at the head revision */
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
/*
 * Non-blocking checkout, for hosts that cannot wait: like
 * caracal_pool_checkout, but when no connection is idle and none may be
 * opened it returns CARACAL_EAGAIN at once instead of waiting. Call it
 * again later, passing in waited how many seconds you have been trying:
 * once waited >= pool_timeout it fails with CARACAL_ETIMEOUT and the
 * usual message naming the holders. When a new connection may be opened
 * it is opened here, which blocks for the connect: prewarm.
 */
int caracal_pool_try_checkout(caracal_Pool *pool, const char *holder, double waited,
                              caracal_Conn **out, char *err, size_t errlen);
/*
 * Open connections now until the pool holds min(n, pool_size) of them
 * (idle or in use), so checkouts in a tick loop never stall on a
 * connect. Returns how many were opened (0 when already warm), or
 * CARACAL_ECONNECT / CARACAL_ECLOSED with a message in err.
 */
int caracal_pool_prewarm(caracal_Pool *pool, int n, char *err, size_t errlen);
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
/* Receives the message (with a traceback) of an error raised inside a
 * task that nothing caught. Never called with a password in message
 * unless the script itself put one there. */
typedef void (*caracal_ErrorFn)(void *ud, const char *message);

typedef struct caracal_Options {
  const char *lua_dir;        /* folder holding caracal/db.lua etc.; NULL: built-in */
  const char *migrations_dir; /* NULL: built-in path */
  caracal_Pool *pool;         /* optional pool shared with other states: Lua's
                                 initialize_connection_manager() with no
                                 arguments uses it (core.shared_pool) */
  caracal_LogFn log;          /* receives redacted messages of pools made
                                 from Lua, and task errors when on_error is
                                 NULL */
  void *log_ud;
  int nonblocking;            /* start in non-blocking mode (see above) */
  caracal_ErrorFn on_error;   /* uncaught errors in tasks; NULL: log at
                                 CARACAL_LOG_ERROR, or stderr without log */
  void *error_ud;
} caracal_Options;

/*
 * Load Caracal into L, a state the host made (luaL_newstate or
 * lua_newstate with its own allocator) and opened the standard libraries
 * in. The options are copied; a pool given is retained until
 * caracal_close. Returns 0, or -1 with the error message on the stack.
 * Never calls exit().
 */
int caracal_openlibs(lua_State *L, const caracal_Options *options);
/*
 * Shut down what caracal_openlibs opened in L, from the host (never from
 * Lua running in L): queries still in flight are cancelled and their
 * results drained; every connection a handle, session or task of L still
 * holds goes back to its pool rolled back (no transaction is left open on
 * the server); suspended tasks are dropped without running further; the
 * listener connection is returned; the current connection manager is
 * closed; the state's reference to the shared pool is dropped. Then call
 * lua_close(L). Afterwards caracal_poll and caracal_spawn on L return
 * CARACAL_ECLOSED and queries in L block.
 */
void caracal_close(lua_State *L);

/*
 * Start a task: pops a function and nargs arguments above it (the
 * function is at -(nargs+1)), runs it in a new coroutine until it first
 * waits or ends. Returns 1 when it is now waiting (caracal_poll resumes
 * it), 0 when it already finished (its results are dropped), CARACAL_ELUA
 * when it raised (reported to on_error), CARACAL_EINVAL when the value is
 * not a function, CARACAL_ECLOSED after caracal_close. A task that calls
 * coroutine.yield() itself is resumed at the next caracal_poll (a way to
 * wait one frame). Lua: core.spawn(fn, ...).
 */
int caracal_spawn(lua_State *L, int nargs);

/*
 * The host's per-frame step. Delivers LISTEN notifications to their
 * callbacks (each runs as a task), then resumes the tasks whose wait is
 * over: a result arrived, a pool connection may be free, a sleep ended,
 * a frame passed. It never waits for the network: sockets are only read
 * (PQconsumeInput) when they have data. budget_seconds bounds the time
 * spent resuming tasks (checked after each one, so one resume can
 * overrun it; at least one ready task runs per call); negative: no
 * limit. Returns the number of tasks still waiting (not counting the
 * listener), CARACAL_ECLOSED after caracal_close, CARACAL_EINVAL when
 * called from inside a task or a callback it runs. Errors in tasks go to
 * on_error and do not stop the others. Lua: core.poll([budget]).
 */
int caracal_poll(lua_State *L, double budget_seconds);

/*
 * For hosts with their own event loop: a file descriptor (an epoll
 * instance, Linux) that polls readable whenever a socket Caracal waits on
 * (a task's query, the LISTEN connection) has something to read or can
 * take pending output. Wait on it, then call caracal_poll. Waits that
 * have no socket (a pool connection to come back, core.sleep, a task
 * that yielded for a frame) do not make it readable: also wake up after
 * caracal_poll_timeout(L) seconds. The descriptor belongs to L: do not
 * close it; caracal_close does. Returns -1 (errno set) on failure.
 */
int caracal_event_fd(lua_State *L);

/*
 * How long a host waiting on caracal_event_fd may sleep before it must
 * call caracal_poll again: 0 when a task is ready to run now, the time to
 * the nearest core.sleep deadline or pool retry, or -1 when only sockets
 * (or nothing) are awaited.
 */
double caracal_poll_timeout(lua_State *L);

/*
 * The seed's startup check: CARACAL_OK when the database of the state's
 * current connection manager (made as initialize_connection_manager()
 * makes it when there is none) is at the head migration. Otherwise
 * CARACAL_ESCHEMA with the message in err: "Database schema is outdated!
 * Current revision: X, Head revision: Y, Pending migrations: N, run
 * 'caracal db upgrade head'", or that the database is ahead of the
 * scripts, at an unknown revision, or dirty; CARACAL_ELUA for any other
 * failure (the database unreachable, ...). Call after caracal_openlibs.
 */
int caracal_check_schema_version(lua_State *L, char *err, size_t errlen);

/* Replace the password (raw and percent-encoded) and any password=...
 * or user:secret@ parts of msg with ***. Returns bytes written (out is
 * always NUL-terminated when outlen > 0). */
size_t caracal_redact(const char *msg, const char *password, char *out, size_t outlen);

#ifdef __cplusplus
}
#endif
#endif /* CARACAL_H */
