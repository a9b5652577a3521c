/*
 * test_pool.c: the connection pool against a real PostgreSQL.
 *
 * Needs CARACAL_TEST_HOST and CARACAL_TEST_PORT (spec/run.sh sets them to
 * the throwaway cluster). Timeouts are scaled down; recycling runs on an
 * injected clock.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "caracal.h"
#include "tap.h"
#include "testpool.h"

static const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
static const char *vals[] = {NULL, NULL, "caracal", "caracal", "caracal-test-pool", NULL};

static caracal_Pool *make_pool(int size, int overflow, double timeout, caracal_PoolConfig *extra) {
  return pool_from(kw, vals, size, overflow, timeout, extra);
}

TEST(exhaustion_times_out_naming_holders) {
  caracal_Pool *p = make_pool(10, 5, 1.0, NULL);
  caracal_Conn *held[15];
  char label[32];
  for (int i = 0; i < 15; i++) {
    snprintf(label, sizeof label, "holder-%d.lua:%d", i, i + 1);
    held[i] = checkout(p, label);
    CHECK(held[i] != NULL, "checkout %d", i);
  }
  caracal_PoolStatus st = status(p);
  CHECK(st.checked_out == 15 && st.overflow == 5 && st.total == 15, "out %d overflow %d total %d",
        st.checked_out, st.overflow, st.total);
  caracal_Conn *c = NULL;
  char err[1024];
  double t0 = now_s();
  int rc = caracal_pool_checkout(p, "sixteenth", &c, err, sizeof err);
  double waited = now_s() - t0;
  CHECK(rc == CARACAL_ETIMEOUT, "rc %d", rc);
  CHECK(waited >= 1.0 && waited < 1.5, "waited %.3f s", waited);
  CHECK(strstr(err, "size 10 overflow 5") != NULL, "message: %s", err);
  CHECK(strstr(err, "holder-3.lua:4") != NULL, "message names holders: %s", err);
  st = status(p);
  CHECK(st.total == 15 && st.timeouts == 1, "no 16th connection: total %d timeouts %llu", st.total,
        (unsigned long long)st.timeouts);
  /* Overflow connections are closed when they come back to a full pool. */
  for (int i = 0; i < 15; i++) caracal_pool_checkin(held[i]);
  st = status(p);
  CHECK(st.checked_in == 10 && st.total == 10 && st.overflow == 0 && st.checked_out == 0,
        "in %d total %d overflow %d", st.checked_in, st.total, st.overflow);
  caracal_pool_release(p);
}

TEST(most_recently_used_is_reused) {
  caracal_Pool *p = make_pool(3, 0, 1.0, NULL);
  caracal_Conn *a = checkout(p, "a"), *b = checkout(p, "b");
  PGconn *pb = caracal_conn_pg(b);
  caracal_pool_checkin(a);
  caracal_pool_checkin(b);
  caracal_Conn *c = checkout(p, "c");
  CHECK(caracal_conn_pg(c) == pb, "the last returned comes out first");
  caracal_pool_checkin(c);
  caracal_pool_release(p);
}

static double fake_now;
static double fake_clock(void *ud) {
  (void)ud;
  return fake_now;
}

TEST(recycle_replaces_old_connections_at_checkout_only) {
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.clock = fake_clock;
  cfg.pool_recycle = 3600;
  cfg.recycle_jitter = 0;
  fake_now = 1000;
  caracal_Pool *p = make_pool(2, 0, 1.0, &cfg);
  caracal_Conn *c = checkout(p, "first");
  int pid1 = PQbackendPID(caracal_conn_pg(c));
  caracal_Conn *held = checkout(p, "held across the boundary");
  int pid_held = PQbackendPID(caracal_conn_pg(held));
  caracal_pool_checkin(c);
  fake_now = 1001;
  c = checkout(p, "second");
  CHECK(PQbackendPID(caracal_conn_pg(c)) == pid1, "reused within its lifetime");
  caracal_pool_checkin(c);
  fake_now = 1000 + 3601;
  /* The held one is old now, but nobody closes it under its user. */
  CHECK(scalar(held, "select 1") == 1, "a checked-out connection is never closed under its user");
  CHECK(PQbackendPID(caracal_conn_pg(held)) == pid_held, "same backend");
  c = checkout(p, "third");
  CHECK(PQbackendPID(caracal_conn_pg(c)) != pid1, "replaced after pool_recycle");
  CHECK(status(p).recycles == 1, "one recycle counted");
  caracal_pool_checkin(c);
  caracal_pool_checkin(held); /* expired: closed on return */
  caracal_PoolStatus st = status(p);
  CHECK(st.total == 1 && st.checked_in == 1, "expired connection closed on return: total %d", st.total);
  caracal_pool_release(p);
}

/* 8 threads x many checkouts: exact counts, never one connection in two
 * threads at once (each PGconn's users are counted under a lock). */
#define THREADS 8
#define ROUNDS 300
static atomic_int overlap, done_rounds;
static pthread_mutex_t claims_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { PGconn *pg; int users; } claims[64];

/* Count users of one PGconn; returns the count before this claim. */
static int claim(PGconn *pg, int delta) {
  pthread_mutex_lock(&claims_mu);
  int i = 0, before = 0;
  while (i < 64 && claims[i].pg && claims[i].pg != pg) i++;
  if (i < 64) {
    claims[i].pg = pg;
    before = claims[i].users;
    claims[i].users += delta;
  }
  pthread_mutex_unlock(&claims_mu);
  return before;
}

static void *worker(void *arg) {
  caracal_Pool *p = arg;
  for (int i = 0; i < ROUNDS; i++) {
    caracal_Conn *c = checkout(p, "worker");
    if (!c) continue;
    PGconn *pg = caracal_conn_pg(c);
    if (claim(pg, 1) != 0) atomic_fetch_add(&overlap, 1);
    if (i % 50 == 0) (void)scalar(c, "select 1");
    claim(pg, -1);
    caracal_pool_checkin(c);
    atomic_fetch_add(&done_rounds, 1);
  }
  return NULL;
}

TEST(threads_share_one_pool) {
  caracal_Pool *p = make_pool(3, 2, 10.0, NULL);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, p);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  caracal_PoolStatus st = status(p);
  CHECK(atomic_load(&done_rounds) == THREADS * ROUNDS, "rounds %d", atomic_load(&done_rounds));
  CHECK(atomic_load(&overlap) == 0, "a connection was used by two threads at once");
  CHECK(st.checked_out == 0 && st.total <= 5 && st.total == st.checked_in,
        "out %d total %d in %d", st.checked_out, st.total, st.checked_in);
  CHECK(st.checked_in <= 3, "only pool_size stay open: %d", st.checked_in);
  caracal_pool_release(p);
}

TEST(reset_on_return_rolls_back_and_cleans) {
  caracal_Pool *p = make_pool(1, 0, 1.0, NULL);
  caracal_Conn *c = checkout(p, "writer");
  PGconn *pg = caracal_conn_pg(c);
  PQclear(PQexec(pg, "create table if not exists pool_reset_t(x int)"));
  PQclear(PQexec(pg, "truncate pool_reset_t"));
  PQclear(PQexec(pg, "begin"));
  PQclear(PQexec(pg, "insert into pool_reset_t values (1)"));
  PQclear(PQexec(pg, "set search_path = nowhere"));
  caracal_conn_mark_dirty(c); /* the Lua layer does this from the command tag */
  caracal_pool_checkin(c);
  c = checkout(p, "reader");
  pg = caracal_conn_pg(c);
  CHECK(PQtransactionStatus(pg) == PQTRANS_IDLE, "idle after return");
  CHECK(scalar(c, "select count(*) from public.pool_reset_t") == 0, "the open transaction was rolled back");
  PGresult *r = PQexec(pg, "show search_path");
  CHECK(strcmp(PQgetvalue(r, 0, 0), "\"$user\", public") == 0, "search_path reset: %s", PQgetvalue(r, 0, 0));
  PQclear(r);
  r = PQexec(pg, "show DateStyle");
  PQclear(r);
  /* An aborted transaction comes back idle too. */
  PQclear(PQexec(pg, "begin"));
  PQclear(PQexec(pg, "select 1/0"));
  CHECK(PQtransactionStatus(pg) == PQTRANS_INERROR, "aborted");
  caracal_pool_checkin(c);
  c = checkout(p, "again");
  CHECK(PQtransactionStatus(caracal_conn_pg(c)) == PQTRANS_IDLE, "idle after an aborted transaction");
  PQclear(PQexec(caracal_conn_pg(c), "drop table pool_reset_t"));
  caracal_pool_checkin(c);
  caracal_pool_release(p);
}

static void terminate_pids(const int *pids, int n) {
  caracal_Pool *admin = make_pool(1, 0, 1.0, NULL);
  caracal_Conn *a = checkout(admin, "admin");
  for (int i = 0; i < n; i++) {
    char sql[96];
    snprintf(sql, sizeof sql, "select pg_terminate_backend(%d)", pids[i]);
    PQclear(PQexec(caracal_conn_pg(a), sql));
  }
  caracal_pool_checkin(a);
  caracal_pool_release(admin);
  usleep(200 * 1000); /* let the backends exit */
}

TEST(terminated_backends_are_replaced_with_pre_ping) {
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.pre_ping = 1;
  caracal_Pool *p = make_pool(3, 0, 2.0, &cfg);
  caracal_Conn *c[3];
  int pids[3];
  for (int i = 0; i < 3; i++) {
    c[i] = checkout(p, "x");
    pids[i] = PQbackendPID(caracal_conn_pg(c[i]));
  }
  for (int i = 0; i < 3; i++) caracal_pool_checkin(c[i]);
  terminate_pids(pids, 3);
  caracal_Conn *fresh = checkout(p, "after kill");
  CHECK(fresh && scalar(fresh, "select 7") == 7, "the next checkout hands out a live connection");
  caracal_pool_checkin(fresh);
  caracal_PoolStatus st = status(p);
  CHECK(st.discards >= 1, "dead connections destroyed: %llu", (unsigned long long)st.discards);
  caracal_pool_release(p);
}

TEST(terminated_backend_without_pre_ping_fails_once_then_recovers) {
  caracal_Pool *p = make_pool(2, 0, 2.0, NULL);
  caracal_Conn *a = checkout(p, "a"), *b = checkout(p, "b");
  int pids[2] = {PQbackendPID(caracal_conn_pg(a)), PQbackendPID(caracal_conn_pg(b))};
  caracal_pool_checkin(b);
  terminate_pids(pids, 2);
  /* The borrower of a dead connection gets an error, never a success. */
  PGresult *r = PQexec(caracal_conn_pg(a), "select 1");
  CHECK(PQresultStatus(r) != PGRES_TUPLES_OK, "a dead connection does not answer");
  PQclear(r);
  CHECK(PQstatus(caracal_conn_pg(a)) == CONNECTION_BAD, "status BAD is the signal");
  caracal_pool_checkin(a); /* discarded; b, as old, is now stale */
  caracal_Conn *c = checkout(p, "after");
  CHECK(c && scalar(c, "select 2") == 2, "the stale idle connection was replaced");
  caracal_pool_checkin(c);
  caracal_pool_release(p);
}

TEST(failed_connect_does_not_leak_a_slot) {
  static const char *bad_kw[] = {"host", "port", "dbname", "user", "password", "connect_timeout", NULL};
  static const char *bad_vals[] = {"127.0.0.1", "1", "caracal", "caracal", "Sup3r-S3cret@pw", "2", NULL};
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = bad_kw;
  cfg.values = bad_vals;
  cfg.pool_size = 1;
  cfg.max_overflow = 0;
  caracal_Pool *p;
  char err[1024];
  caracal_pool_new(&cfg, &p, err, sizeof err);
  caracal_Conn *c = NULL;
  int rc = caracal_pool_checkout(p, "x", &c, err, sizeof err);
  CHECK(rc == CARACAL_ECONNECT, "connect error: %d", rc);
  CHECK(strstr(err, "Sup3r-S3cret") == NULL, "no password in: %s", err);
  caracal_PoolStatus st = status(p);
  CHECK(st.total == 0 && st.connecting == 0 && st.checked_out == 0, "no slot leaked");
  rc = caracal_pool_checkout(p, "x", &c, err, sizeof err);
  CHECK(rc == CARACAL_ECONNECT, "still fails the same way, no timeout: %d", rc);
  caracal_pool_release(p);
}

static int warnings;
static void count_warnings(void *ud, int level, const char *msg) {
  (void)ud;
  (void)msg;
  if (level == CARACAL_LOG_WARN) warnings++;
}

TEST(double_checkin_and_close) {
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.log = count_warnings;
  caracal_Pool *p = make_pool(2, 0, 0.2, &cfg);
  caracal_Conn *c = checkout(p, "x");
  caracal_pool_checkin(c);
  caracal_pool_checkin(c);
  CHECK(warnings == 1, "the second return only warns: %d", warnings);
  CHECK(status(p).checked_in == 1, "counted once");
  caracal_Conn *held = checkout(p, "held");
  caracal_pool_close(p);
  caracal_pool_close(p); /* idempotent */
  caracal_Conn *d = NULL;
  char err[256];
  CHECK(caracal_pool_checkout(p, "late", &d, err, sizeof err) == CARACAL_ECLOSED, "closed");
  CHECK(scalar(held, "select 3") == 3, "an in-use connection still works until returned");
  caracal_pool_checkin(held);
  CHECK(status(p).total == 0, "returned to a closed pool: closed");
  caracal_pool_release(p);
}

TEST(health_check) {
  caracal_Pool *p = make_pool(1, 0, 1.0, NULL);
  CHECK(caracal_pool_health_check(p) == 1, "healthy");
  caracal_pool_release(p);
  static const char *bad_kw[] = {"host", "port", "dbname", NULL};
  static const char *bad_vals[] = {"127.0.0.1", "1", "x", NULL};
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = bad_kw;
  cfg.values = bad_vals;
  char err[256];
  caracal_pool_new(&cfg, &p, err, sizeof err);
  CHECK(caracal_pool_health_check(p) == 0, "unreachable is false, not a crash");
  caracal_pool_release(p);
}

TEST(config_validation) {
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  CHECK(cfg.pool_size == 10 && cfg.max_overflow == 5 && cfg.pool_timeout == 30 && cfg.pool_recycle == 3600,
        "seed defaults");
  cfg.pool_size = -1;
  caracal_Pool *p = NULL;
  char err[256];
  CHECK(caracal_pool_new(&cfg, &p, err, sizeof err) == CARACAL_EINVAL, "rejected");
  CHECK(strcmp(err, "pool_size must be an integer >= 1, got -1") == 0, "message: %s", err);
  caracal_pool_config_init(&cfg);
  cfg.pool_timeout = -0.5;
  CHECK(caracal_pool_new(&cfg, &p, err, sizeof err) == CARACAL_EINVAL, "negative timeout rejected");
}

int main(void) {
  vals[0] = getenv("CARACAL_TEST_HOST");
  vals[1] = getenv("CARACAL_TEST_PORT");
  if (!vals[0] || !vals[1]) {
    printf("1..0 # SKIP CARACAL_TEST_HOST/PORT not set (run through spec/run.sh)\n");
    return 0;
  }
  RUN(config_validation, "pool: seed defaults and validation");
  RUN(exhaustion_times_out_naming_holders, "pool: a 16th checkout of 10+5 waits pool_timeout and names the holders; overflow closed on return");
  RUN(most_recently_used_is_reused, "pool: most recently used connection is reused first");
  RUN(recycle_replaces_old_connections_at_checkout_only, "pool: recycle at checkout only, never under a user");
  RUN(threads_share_one_pool, "pool: 8 threads share one pool with exact counts");
  RUN(reset_on_return_rolls_back_and_cleans, "pool: reset on return of a connection left mid-transaction");
  RUN(terminated_backends_are_replaced_with_pre_ping, "pool: pre-ping replaces terminated backends");
  RUN(terminated_backend_without_pre_ping_fails_once_then_recovers, "pool: without pre-ping a dead connection fails once, then the pool recovers");
  RUN(failed_connect_does_not_leak_a_slot, "pool: a failed connect leaks no slot and no password");
  RUN(double_checkin_and_close, "pool: double return warns; close is idempotent");
  RUN(health_check, "pool: health_check is true or false, never raises");
  return tap_done();
}
