/*
 * test_async.c: non-blocking mode as an embedding host drives it.
 *
 * Needs CARACAL_TEST_HOST and CARACAL_TEST_PORT (spec/run.sh sets them).
 * Each test makes a pool in C, opens states on it with caracal_openlibs,
 * and watches the server from a separate plain libpq connection, so what
 * is asserted is what the server saw (pg_stat_activity, committed rows),
 * never only what Caracal says about itself.
 */
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "caracal.h"
#include "tap.h"

#define APP "caracal-test-async"

static const char *host, *port;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static caracal_Pool *make_pool(int size, int overflow, double timeout) {
  const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
  const char *vals[] = {host, port, "caracal", "caracal", APP, NULL};
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = size;
  cfg.max_overflow = overflow;
  cfg.pool_timeout = timeout;
  caracal_Pool *p = NULL;
  char err[256];
  if (caracal_pool_new(&cfg, &p, err, sizeof err) != CARACAL_OK) {
    printf("# pool_new: %s\n", err);
    exit(1);
  }
  if (caracal_pool_prewarm(p, size, err, sizeof err) < 0) {
    printf("# prewarm: %s\n", err);
    exit(1);
  }
  return p;
}

/* A plain libpq connection that watches what the server sees. */
static PGconn *observer(void) {
  const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
  const char *vals[] = {host, port, "caracal", "caracal", "caracal-test-observer", NULL};
  PGconn *pg = PQconnectdbParams(kw, vals, 0);
  if (PQstatus(pg) != CONNECTION_OK) {
    printf("# observer: %s\n", PQerrorMessage(pg));
    exit(1);
  }
  PQclear(PQexec(pg, "set client_min_messages = warning"));
  return pg;
}

static long scalar(PGconn *pg, const char *sql) {
  PGresult *r = PQexec(pg, sql);
  long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? atol(PQgetvalue(r, 0, 0)) : -1;
  if (PQresultStatus(r) != PGRES_TUPLES_OK) printf("# %s: %s", sql, PQerrorMessage(pg));
  PQclear(r);
  return v;
}

static void exec(PGconn *pg, const char *sql) {
  PGresult *r = PQexec(pg, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
    printf("# %s: %s", sql, PQerrorMessage(pg));
  PQclear(r);
}

/* Errors the states report (on_error). */
static char last_error[2048];
static int errors;
static void on_error(void *ud, const char *msg) {
  (void)ud;
  errors++;
  snprintf(last_error, sizeof last_error, "%s", msg);
}

static lua_State *open_state(caracal_Pool *pool, int nonblocking) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.pool = pool;
  o.nonblocking = nonblocking;
  o.on_error = on_error;
  if (caracal_openlibs(L, &o) != 0) {
    printf("# openlibs: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  return L;
}

/* Run a chunk on the main thread; false (and a diagnostic) on error. */
static bool run(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    printf("# lua: %s\n", luaL_tolstring(L, -1, NULL));
    lua_settop(L, 0);
    return false;
  }
  lua_settop(L, 0);
  return true;
}

/* Spawn the global function `name` as a task. */
static int spawn_global(lua_State *L, const char *name) {
  lua_getglobal(L, name);
  return caracal_spawn(L, 0);
}

static lua_Integer global_int(lua_State *L, const char *name) {
  lua_getglobal(L, name);
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
  lua_pop(L, 1);
  return v;
}

static void close_state(lua_State *L) {
  caracal_close(L);
  lua_close(L);
}

static int checked_out(caracal_Pool *p) {
  caracal_PoolStatus st;
  caracal_pool_status(p, &st);
  return st.checked_out;
}

TEST(sleep_query_does_not_block_the_poll) {
  caracal_Pool *pool = make_pool(2, 0, 5);
  lua_State *L = open_state(pool, 1);
  CHECK(run(L, "db = require('caracal.db').initialize_connection_manager()\n"
               "function slow()\n"
               "  local rows = db:execute('select pg_sleep(0.5), 41 + 1 as answer')\n"
               "  answer = rows[1].answer\n"
               "end"),
        "setup");
  int rc = spawn_global(L, "slow");
  CHECK(rc == 1, "the task is waiting after its first step: %d", rc);
  CHECK(global_int(L, "answer") == -1, "no answer yet");
  int polls = 0, pending_polls = 0, wrong = 0;
  double worst = 0, t0 = now_s();
  for (;;) {
    double a = now_s();
    int left = caracal_poll(L, 0.001);
    double took = now_s() - a;
    if (took > worst) worst = took;
    polls++;
    lua_Integer answer = global_int(L, "answer");
    if (left == 1) {
      pending_polls++;
      if (answer != -1) wrong++; /* still pending: the coroutine has not resumed */
    } else {
      CHECK(left == 0, "poll returned %d", left);
      CHECK(answer == 42, "the coroutine resumed with the right result: %lld", (long long)answer);
      break;
    }
    if (now_s() - t0 > 10) {
      CHECK(0, "the query never finished");
      break;
    }
    sleep_ms(5); /* a frame */
  }
  CHECK(polls > 1 && pending_polls >= 1, "polls %d, of which pending %d", polls, pending_polls);
  CHECK(wrong == 0, "a poll reported the query pending after the coroutine had resumed");
  /* A blocking poll would have taken the whole 0.5 s in one call. */
  CHECK(worst < 0.25, "worst poll %.3f s", worst);
  CHECK(now_s() - t0 >= 0.45, "the server really slept");
  CHECK(errors == 0, "no task error: %s", last_error);
  close_state(L);
  CHECK(checked_out(pool) == 0, "connection returned");
  caracal_pool_release(pool);
}

TEST(many_coroutines_share_a_small_pool) {
  caracal_Pool *pool = make_pool(5, 0, 30);
  PGconn *obs = observer();
  exec(obs, "drop table if exists async_many; create table async_many(n int primary key)");
  lua_State *L = open_state(pool, 1);
  CHECK(run(L, "db = require('caracal.db').initialize_connection_manager()\n"
               "done = 0\n"
               "function worker(n)\n"
               "  db:session_scope(function(s)\n"
               "    s:execute('select pg_sleep(0.3)')\n"
               "    s:execute('insert into async_many(n) values ($1)', n)\n"
               "  end)\n"
               "  done = done + 1\n"
               "end"),
        "setup");
  for (int i = 1; i <= 20; i++) {
    lua_getglobal(L, "worker");
    lua_pushinteger(L, i);
    CHECK(caracal_spawn(L, 1) == 1, "task %d waits", i);
  }
  int left = caracal_poll(L, 0);
  CHECK(left == 20, "all 20 in flight at once: %d", left);
  long max_active = 0;
  int max_out = 0;
  double t0 = now_s();
  while (left > 0 && now_s() - t0 < 20) {
    left = caracal_poll(L, 0.002);
    long active = scalar(obs, "select count(*) from pg_stat_activity where application_name = '" APP
                              "' and state = 'active' and query like '%pg_sleep%'");
    if (active > max_active) max_active = active;
    if (checked_out(pool) > max_out) max_out = checked_out(pool);
    sleep_ms(10);
  }
  CHECK(left == 0, "all finished: %d left", left);
  CHECK(global_int(L, "done") == 20, "done %lld", (long long)global_int(L, "done"));
  CHECK(max_active == 5, "the server ran 5 statements at once, the pool's size: %ld", max_active);
  CHECK(max_out == 5, "never more than the pool: %d", max_out);
  CHECK(scalar(obs, "select count(*) from async_many") == 20, "20 rows committed");
  CHECK(scalar(obs, "select sum(n) from async_many") == 210, "each one once");
  CHECK(errors == 0, "no task error: %s", last_error);
  close_state(L);
  CHECK(checked_out(pool) == 0, "every connection returned");
  exec(obs, "drop table async_many");
  PQfinish(obs);
  caracal_pool_release(pool);
}

TEST(shutdown_with_queries_in_flight_leaves_no_transaction) {
  caracal_Pool *pool = make_pool(4, 0, 5);
  PGconn *obs = observer();
  exec(obs, "drop table if exists async_shutdown; create table async_shutdown(n int)");
  lua_State *L = open_state(pool, 1);
  CHECK(run(L, "db = require('caracal.db').initialize_connection_manager()\n"
               "function stuck(n)\n"
               "  db:session_scope(function(s)\n"
               "    s:execute('insert into async_shutdown values ($1)', n)\n"
               "    s:execute('select pg_sleep(60)')\n"
               "  end)\n"
               "end\n"
               "function closer(n)\n"  /* a <close> session waiting for a frame */
               "  local s <close> = db:session()\n"
               "  s:execute('insert into async_shutdown values ($1)', n)\n"
               "  while true do coroutine.yield() end\n"
               "end"),
        "setup");
  for (int i = 1; i <= 3; i++) {
    lua_getglobal(L, "stuck");
    lua_pushinteger(L, i);
    caracal_spawn(L, 1);
  }
  lua_getglobal(L, "closer");
  lua_pushinteger(L, 4);
  caracal_spawn(L, 1);
  double t0 = now_s();
  long active = 0, in_tx = 0;
  while (now_s() - t0 < 10) {
    caracal_poll(L, 0.01);
    active = scalar(obs, "select count(*) from pg_stat_activity where application_name = '" APP
                         "' and state = 'active' and query like '%pg_sleep(60)%'");
    in_tx = scalar(obs, "select count(*) from pg_stat_activity where application_name = '" APP
                        "' and state = 'idle in transaction'");
    if (active == 3 && in_tx == 1) break;
    sleep_ms(10);
  }
  CHECK(active == 3 && in_tx == 1, "3 statements running and one idle transaction: %ld, %ld", active, in_tx);
  double c0 = now_s();
  caracal_close(L);
  double took = now_s() - c0;
  CHECK(took < 5, "caracal_close returned without waiting for the statements: %.2f s", took);
  CHECK(checked_out(pool) == 0, "every connection is back in the pool: %d", checked_out(pool));
  lua_close(L);
  long open_tx = scalar(obs, "select count(*) from pg_stat_activity where application_name = '" APP
                             "' and state in ('active', 'idle in transaction', "
                             "'idle in transaction (aborted)')");
  CHECK(open_tx == 0, "no open transaction or running statement left: %ld", open_tx);
  CHECK(scalar(obs, "select count(*) from async_shutdown") == 0, "nothing was committed");
  CHECK(errors == 0, "shutdown is not an error: %s", last_error);
  exec(obs, "drop table async_shutdown");
  PQfinish(obs);
  caracal_pool_release(pool);
}

/* Two threads, each with its own state on one pool: one in blocking
 * mode, one running its scopes as tasks. */
#define ROUNDS 40
typedef struct Worker {
  caracal_Pool *pool;
  int id, nonblocking;
  int ok;
  char err[512];
} Worker;

static void *thread_main(void *arg) {
  Worker *w = arg;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  caracal_Options o;
  memset(&o, 0, sizeof o);
  o.pool = w->pool;
  o.nonblocking = w->nonblocking;
  if (caracal_openlibs(L, &o) != 0) {
    snprintf(w->err, sizeof w->err, "%s", lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  char code[1024];
  snprintf(code, sizeof code,
           "local db = require('caracal.db')\n"
           "local m = db.initialize_connection_manager()\n"
           "assert(m.pool == require('caracal.core').shared_pool, 'the host pool')\n"
           "function round(i)\n"
           "  m:session_scope(function(s)\n"
           "    s:execute('insert into async_threads(thread, n) values ($1, $2)', %d, i)\n"
           "  end)\n"
           "end",
           w->id);
  if (luaL_dostring(L, code) != LUA_OK) {
    snprintf(w->err, sizeof w->err, "%s", lua_tostring(L, -1));
  } else if (w->nonblocking) {
    for (int i = 1; i <= ROUNDS; i++) {
      lua_getglobal(L, "round");
      lua_pushinteger(L, i);
      caracal_spawn(L, 1);
    }
    while (caracal_poll(L, 0.005) > 0) sleep_ms(1);
    w->ok = 1;
  } else {
    w->ok = 1;
    for (int i = 1; i <= ROUNDS && w->ok; i++) {
      lua_getglobal(L, "round");
      lua_pushinteger(L, i);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(w->err, sizeof w->err, "%s", luaL_tolstring(L, -1, NULL));
        w->ok = 0;
      }
    }
  }
  caracal_close(L);
  lua_close(L);
  return NULL;
}

TEST(two_threads_with_their_own_states_share_one_pool) {
  caracal_Pool *pool = make_pool(3, 0, 10);
  PGconn *obs = observer();
  exec(obs, "drop table if exists async_threads; create table async_threads(thread int, n int, "
            "primary key (thread, n))");
  Worker w[2] = {{pool, 1, 0, 0, ""}, {pool, 2, 1, 0, ""}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, thread_main, &w[i]);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) CHECK(w[i].ok, "thread %d: %s", w[i].id, w[i].err);
  CHECK(scalar(obs, "select count(*) from async_threads where thread = 1") == ROUNDS, "blocking thread's rows");
  CHECK(scalar(obs, "select count(*) from async_threads where thread = 2") == ROUNDS, "task thread's rows");
  CHECK(errors == 0, "no task error: %s", last_error);
  CHECK(checked_out(pool) == 0, "every connection returned");
  exec(obs, "drop table async_threads");
  PQfinish(obs);
  caracal_pool_release(pool);
}

TEST(notifications_arrive_through_poll_and_the_event_fd) {
  caracal_Pool *pool = make_pool(2, 0, 5);
  PGconn *obs = observer();
  lua_State *L = open_state(pool, 1);
  CHECK(run(L, "core = require('caracal.core')\n"
               "heard = {}\n"
               "core.listen('Game Events', function(channel, payload, pid)\n"
               "  heard[#heard + 1] = channel .. '|' .. payload .. '|' .. pid\n"
               "end)"),
        "listen");
  int fd = caracal_event_fd(L);
  CHECK(fd >= 0, "an event fd");
  struct pollfd pfd = {fd, POLLIN, 0};
  CHECK(poll(&pfd, 1, 0) == 0, "nothing to read yet");
  exec(obs, "notify \"Game Events\", 'level-up'");
  CHECK(poll(&pfd, 1, 5000) == 1, "the event fd became readable");
  caracal_poll(L, -1);
  char want[96];
  snprintf(want, sizeof want, "Game Events|level-up|%d", PQbackendPID(obs));
  lua_getglobal(L, "heard");
  lua_rawgeti(L, -1, 1);
  const char *got = lua_tostring(L, -1);
  CHECK(got && strcmp(got, want) == 0, "callback(channel, payload, pid): %s", got ? got : "nothing");
  lua_pop(L, 2);
  caracal_poll(L, -1);
  CHECK(poll(&pfd, 1, 0) == 0, "drained: not readable any more");
  /* unlisten gives the listener back; it is reset (UNLISTEN *) on reuse */
  CHECK(run(L, "assert(core.unlisten('Game Events') == true)"), "unlisten");
  exec(obs, "notify \"Game Events\", 'ignored'");
  sleep_ms(50);
  caracal_poll(L, -1);
  lua_getglobal(L, "heard");
  CHECK(lua_rawlen(L, -1) == 1, "nothing heard after unlisten");
  lua_pop(L, 1);
  close_state(L);
  CHECK(checked_out(pool) == 0, "listener returned");
  PQfinish(obs);
  caracal_pool_release(pool);
}

TEST(errors_in_tasks_reach_the_host_and_roll_back) {
  caracal_Pool *pool = make_pool(2, 0, 5);
  PGconn *obs = observer();
  exec(obs, "drop table if exists async_err; create table async_err(n int)");
  lua_State *L = open_state(pool, 1);
  errors = 0;
  last_error[0] = '\0';
  CHECK(run(L, "db = require('caracal.db').initialize_connection_manager()\n"
               "function scoped()\n"
               "  db:session_scope(function(s)\n"
               "    s:execute('insert into async_err values (1)')\n"
               "    s:execute('select pg_sleep(0.05)')\n"
               "    error('boom in a scope')\n"
               "  end)\n"
               "end\n"
               "function closing()\n"
               "  local s <close> = db:session()\n"
               "  s:execute('insert into async_err values (2)')\n"
               "  s:execute('select pg_sleep(0.05)')\n"
               "  error('boom with <close>')\n"
               "end"),
        "setup");
  spawn_global(L, "scoped");
  spawn_global(L, "closing");
  double t0 = now_s();
  while (caracal_poll(L, -1) > 0 && now_s() - t0 < 10) sleep_ms(2);
  CHECK(errors == 2, "both errors reported: %d", errors);
  CHECK(strstr(last_error, "boom") && strstr(last_error, "stack traceback"), "message: %s", last_error);
  CHECK(checked_out(pool) == 0, "connections returned: %d", checked_out(pool));
  CHECK(scalar(obs, "select count(*) from async_err") == 0, "both rolled back");
  CHECK(scalar(obs, "select count(*) from pg_stat_activity where application_name = '" APP
                    "' and state like 'idle in transaction%'") == 0,
        "no open transaction");
  /* A task that is not a function, and a task that ends at once. */
  lua_pushinteger(L, 7);
  CHECK(caracal_spawn(L, 0) == CARACAL_EINVAL, "not a function");
  CHECK(run(L, "function quick() return 1 end"), "quick");
  CHECK(spawn_global(L, "quick") == 0, "finished at once");
  CHECK(lua_gettop(L) == 0, "stack balanced: %d", lua_gettop(L));
  close_state(L);
  exec(obs, "drop table async_err");
  PQfinish(obs);
  caracal_pool_release(pool);
  errors = 0;
}

TEST(an_exhausted_pool_makes_tasks_wait_not_the_host) {
  caracal_Pool *pool = make_pool(1, 0, 0.3);
  lua_State *L = open_state(pool, 1);
  errors = 0;
  CHECK(run(L, "db = require('caracal.db').initialize_connection_manager()\n"
               "function holder() db:execute('select pg_sleep(1)') end\n"
               "function late()\n"
               "  local ok, err = pcall(db.execute, db, 'select 1')\n"
               "  late_kind = not ok and err.kind or 'no error'\n"
               "end"),
        "setup");
  spawn_global(L, "holder");
  CHECK(spawn_global(L, "late") == 1, "the second task waits for the pool");
  double worst = 0, t0 = now_s();
  while (now_s() - t0 < 5) {
    double a = now_s();
    int left = caracal_poll(L, 0.001);
    if (now_s() - a > worst) worst = now_s() - a;
    double wait = caracal_poll_timeout(L);
    CHECK(wait <= 0.05, "a pool wait asks to be polled again soon: %.3f", wait);
    lua_getglobal(L, "late_kind");
    bool decided = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (decided || left == 0) break;
    sleep_ms(5);
  }
  lua_getglobal(L, "late_kind");
  CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "pool_timeout") == 0,
        "pool_timeout after 0.3 s: %s", lua_tostring(L, -1));
  lua_pop(L, 1);
  CHECK(worst < 0.2, "no poll waited for the pool: %.3f s", worst);
  close_state(L);
  CHECK(checked_out(pool) == 0, "returned");
  caracal_pool_release(pool);
}

TEST(try_checkout_and_prewarm) {
  caracal_Pool *pool = make_pool(2, 0, 0.2); /* prewarmed to 2 */
  caracal_PoolStatus st;
  caracal_pool_status(pool, &st);
  CHECK(st.checked_in == 2 && st.connects == 2, "prewarm opened 2: %d", st.checked_in);
  char err[512];
  CHECK(caracal_pool_prewarm(pool, 5, err, sizeof err) == 0, "already warm (capped at pool_size)");
  caracal_Conn *a, *b, *c;
  CHECK(caracal_pool_try_checkout(pool, "a", 0, &a, err, sizeof err) == CARACAL_OK, "a");
  CHECK(caracal_pool_try_checkout(pool, "b", 0, &b, err, sizeof err) == CARACAL_OK, "b");
  double t0 = now_s();
  CHECK(caracal_pool_try_checkout(pool, "c", 0.1, &c, err, sizeof err) == CARACAL_EAGAIN, "would wait");
  CHECK(now_s() - t0 < 0.05, "returned at once");
  CHECK(caracal_pool_try_checkout(pool, "c", 0.25, &c, err, sizeof err) == CARACAL_ETIMEOUT,
        "after pool_timeout: timeout");
  CHECK(strstr(err, "checked out by: ") && strstr(err, "a (") && strstr(err, "b ("), "names holders: %s", err);
  caracal_pool_checkin(a);
  CHECK(caracal_pool_try_checkout(pool, "c", 0, &c, err, sizeof err) == CARACAL_OK, "free again");
  caracal_pool_checkin(b);
  caracal_pool_checkin(c);
  caracal_pool_close(pool);
  CHECK(caracal_pool_try_checkout(pool, "d", 0, &c, err, sizeof err) == CARACAL_ECLOSED, "closed");
  CHECK(caracal_pool_prewarm(pool, 1, err, sizeof err) == CARACAL_ECLOSED, "prewarm closed");
  caracal_pool_release(pool);
}

int main(void) {
  host = getenv("CARACAL_TEST_HOST");
  port = getenv("CARACAL_TEST_PORT");
  if (!host || !port) {
    printf("1..0 # SKIP CARACAL_TEST_HOST/PORT not set (run through spec/run.sh)\n");
    return 0;
  }
  RUN(try_checkout_and_prewarm, "async: try_checkout never waits; prewarm opens up to pool_size");
  RUN(sleep_query_does_not_block_the_poll, "async: pg_sleep(0.5) in a task, every poll returns at once, the task resumes with the result");
  RUN(many_coroutines_share_a_small_pool, "async: 20 tasks in flight share a pool of 5, the server runs 5 at once");
  RUN(an_exhausted_pool_makes_tasks_wait_not_the_host, "async: an exhausted pool makes the task wait and time out, not the host");
  RUN(errors_in_tasks_reach_the_host_and_roll_back, "async: errors in tasks reach on_error; scopes and <close> sessions roll back");
  RUN(notifications_arrive_through_poll_and_the_event_fd, "async: LISTEN/NOTIFY reaches a Lua callback through the event fd and poll");
  RUN(shutdown_with_queries_in_flight_leaves_no_transaction, "async: caracal_close with statements in flight cancels them and leaves no open transaction");
  RUN(two_threads_with_their_own_states_share_one_pool, "async: two threads with their own states on one pool, exact row counts");
  return tap_done();
}
