/*
 * test_load.c: the pool under load and contention, against a real
 * PostgreSQL (CARACAL_TEST_HOST / CARACAL_TEST_PORT, set by spec/run.sh),
 * for a bounded time (CARACAL_LOAD_SECONDS, default 5). Built plain and
 * with -fsanitize=thread by `make reliability`.
 *
 *   - many threads x checkouts, each inserting one row per round: the
 *     table holds exactly the acknowledged rows at the end, and a sampler
 *     thread finds the counters consistent at every sample
 *     (total = checked_in + checked_out + connecting, overflow within
 *     max_overflow, overflow = max(0, total - size));
 *   - P1: a 16th checkout of 10 + 5 fails after 2.0 s and under 2.5 s;
 *   - P2: 40 threads x 10 rounds on 3 + 5;
 *   - P4: a connect that stalls does not hold up a waiter that a returned
 *     connection can serve (connecting happens outside the pool's lock);
 *   - P5: no timeout comes early; invalidating a held connection wakes a
 *     waiter with exactly one new connect;
 *   - P14: 100 threads in query loops, then close twice while in use.
 *
 * Each case also appends a line to the reliability report
 * (CARACAL_RELIABILITY_REPORT).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "caracal.h"
#include "../c/tap.h"
#include "../c/testpool.h"

static const char *host, *port;
static double load_seconds = 5;

/* One line of the reliability report (JSON; the strings here need no
 * escaping beyond what is done). */
static void report(const char *id, const char *fault, const char *expected, const char *observed, long rows,
                   int ok) {
  const char *path = getenv("CARACAL_RELIABILITY_REPORT");
  if (!path || !*path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "{\"id\":\"%s\",\"fault\":\"%s\",\"expected\":\"%s\",\"observed\":\"%s\",", id, fault, expected,
          observed);
  if (rows >= 0) fprintf(f, "\"rows\":%ld,", rows);
  else fprintf(f, "\"rows\":null,");
  fprintf(f, "\"ok\":%s,\"suite\":\"%s\"}\n", ok ? "true" : "false",
          getenv("CARACAL_REPORT_SUITE") ? getenv("CARACAL_REPORT_SUITE") : "test_load");
  fclose(f);
}

static caracal_Pool *make_pool_kv(const char **kw, const char **vals, int size, int overflow, double timeout) {
  return pool_from(kw, vals, size, overflow, timeout, NULL);
}

static const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
static const char *vals[] = {NULL, NULL, "caracal", "caracal", "caracal-test-load", NULL};

static caracal_Pool *make_pool(int size, int overflow, double timeout) {
  return make_pool_kv(kw, vals, size, overflow, timeout);
}

static int exec_ok(caracal_Conn *c, const char *sql) {
  PGresult *r = PQexec(caracal_conn_pg(c), sql);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  PQclear(r);
  return ok;
}

/* ---- a sampler: counters consistent at every sample ------------------- */

typedef struct Sampler {
  caracal_Pool *pool;
  atomic_int stop;
  long samples, bad;
  int max_total, max_overflow_seen;
  char first_bad[200];
  pthread_t thread;
} Sampler;

static void *sampler_run(void *arg) {
  Sampler *s = arg;
  while (!atomic_load(&s->stop)) {
    caracal_PoolStatus st = status(s->pool);
    s->samples++;
    int expect_overflow = st.total > st.size ? st.total - st.size : 0;
    int ok = st.total == st.checked_in + st.checked_out + st.connecting && st.overflow == expect_overflow &&
             (st.max_overflow < 0 || st.overflow <= st.max_overflow) && st.checked_in <= st.size &&
             st.checked_in >= 0 && st.checked_out >= 0 && st.connecting >= 0 && st.waiting >= 0;
    if (!ok) {
      if (s->bad++ == 0)
        snprintf(s->first_bad, sizeof s->first_bad, "size %d in %d out %d connecting %d total %d overflow %d",
                 st.size, st.checked_in, st.checked_out, st.connecting, st.total, st.overflow);
    }
    if (st.total > s->max_total) s->max_total = st.total;
    if (st.overflow > s->max_overflow_seen) s->max_overflow_seen = st.overflow;
    usleep(500);
  }
  return NULL;
}

static void sampler_start(Sampler *s, caracal_Pool *p) {
  memset(s, 0, sizeof *s);
  s->pool = p;
  pthread_create(&s->thread, NULL, sampler_run, s);
}

static void sampler_stop(Sampler *s) {
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
}

/* ---- load: threads x rounds, exact rows ------------------------------ */

#define LOAD_THREADS 24
typedef struct Worker {
  caracal_Pool *pool;
  int id;
  double until;
  long acked, failed;
} Worker;

static void *load_worker(void *arg) {
  Worker *w = arg;
  char sql[128];
  long seq = 0;
  while (now_s() < w->until) {
    caracal_Conn *c = checkout(w->pool, "load_worker");
    if (!c) {
      w->failed++;
      continue;
    }
    seq++;
    snprintf(sql, sizeof sql, "insert into load_t(worker, seq) values (%d, %ld)", w->id, seq);
    int ok = exec_ok(c, "begin") && exec_ok(c, sql);
    if (ok && (seq % 7) == 0) {
      /* every seventh round rolls back: those rows must not appear */
      exec_ok(c, "rollback");
      w->failed++;
    } else {
      PGresult *r = PQexec(caracal_conn_pg(c), "commit");
      int committed = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0;
      PQclear(r);
      if (ok && committed) w->acked++;
      else w->failed++;
    }
    caracal_pool_checkin(c);
  }
  return NULL;
}

TEST(load_exact_rows_and_consistent_counters) {
  caracal_Pool *p = make_pool(4, 4, 10.0);
  caracal_Conn *c = checkout(p, "setup");
  exec_ok(c, "drop table if exists load_t");
  exec_ok(c, "create table load_t(worker int, seq bigint, primary key (worker, seq))");
  caracal_pool_checkin(c);
  Sampler s;
  sampler_start(&s, p);
  Worker w[LOAD_THREADS];
  pthread_t t[LOAD_THREADS];
  double until = now_s() + load_seconds;
  for (int i = 0; i < LOAD_THREADS; i++) {
    w[i] = (Worker){.pool = p, .id = i, .until = until};
    pthread_create(&t[i], NULL, load_worker, &w[i]);
  }
  long acked = 0, failed = 0;
  for (int i = 0; i < LOAD_THREADS; i++) {
    pthread_join(t[i], NULL);
    acked += w[i].acked;
    failed += w[i].failed;
  }
  sampler_stop(&s);
  c = checkout(p, "verify");
  long rows = scalar(c, "select count(*) from load_t");
  exec_ok(c, "drop table load_t");
  caracal_pool_checkin(c);
  caracal_PoolStatus st = status(p);
  CHECK(acked > 0, "some work was done");
  CHECK(rows == acked, "rows %ld, acknowledged %ld", rows, acked);
  CHECK(s.bad == 0, "%ld of %ld samples inconsistent, first: %s", s.bad, s.samples, s.first_bad);
  CHECK(s.max_overflow_seen <= 4 && s.max_total <= 8, "overflow peak %d total peak %d", s.max_overflow_seen,
        s.max_total);
  CHECK(st.checked_out == 0 && st.total <= 4, "at rest: out %d total %d", st.checked_out, st.total);
  char obs[200];
  snprintf(obs, sizeof obs, "%ld commits = %ld rows (%ld rolled back); %ld samples, %ld bad; peak total %d", acked,
           rows, failed, s.samples, s.bad, s.max_total);
  report("P2/load", "24 threads x checkout/insert/commit for a bounded time, 1 in 7 rolled back, pool 4+4",
         "rows = acknowledged commits; counters consistent at every sample", obs, rows,
         rows == acked && s.bad == 0);
  caracal_pool_release(p);
}

/* ---- P1: the timeout's precision ------------------------------------- */

TEST(p1_sixteenth_checkout_times_out_on_time) {
  caracal_Pool *p = make_pool(10, 5, 2.0);
  caracal_Conn *held[15];
  for (int i = 0; i < 15; i++) held[i] = checkout(p, "holder");
  caracal_Conn *c = NULL;
  char err[1024];
  double t0 = now_s();
  int rc = caracal_pool_checkout(p, "sixteenth", &c, err, sizeof err);
  double waited = now_s() - t0;
  caracal_PoolStatus st = status(p);
  CHECK(rc == CARACAL_ETIMEOUT, "rc %d", rc);
  CHECK(waited >= 2.0 && waited < 2.5, "waited %.3f s", waited);
  CHECK(st.connects == 15 && st.total == 15 && st.timeouts == 1, "connects %llu total %d timeouts %llu",
        (unsigned long long)st.connects, st.total, (unsigned long long)st.timeouts);
  char obs[160];
  snprintf(obs, sizeof obs, "timed out after %.3f s; 15 connects; timeouts 1", waited);
  report("P1", "a 16th checkout with 10+5 held, pool_timeout 2 s",
         "fails after >= 2.0 s and < 2.5 s; no 16th connection; timeouts +1", obs, -1,
         rc == CARACAL_ETIMEOUT && waited >= 2.0 && waited < 2.5 && st.connects == 15);
  for (int i = 0; i < 15; i++)
    if (held[i]) caracal_pool_checkin(held[i]);
  caracal_pool_release(p);
}

/* ---- P2: heavy contention --------------------------------------------- */

static void *p2_worker(void *arg) {
  caracal_Pool *p = arg;
  for (int i = 0; i < 10; i++) {
    caracal_Conn *c = checkout(p, "p2");
    if (!c) continue;
    usleep(5000);
    caracal_pool_checkin(c);
  }
  return NULL;
}

TEST(p2_forty_threads_on_three_plus_five) {
  caracal_Pool *p = make_pool(3, 5, 20.0);
  Sampler s;
  sampler_start(&s, p);
  pthread_t t[40];
  for (int i = 0; i < 40; i++) pthread_create(&t[i], NULL, p2_worker, p);
  for (int i = 0; i < 40; i++) pthread_join(t[i], NULL);
  sampler_stop(&s);
  caracal_PoolStatus st = status(p);
  CHECK(s.bad == 0, "inconsistent sample: %s", s.first_bad);
  CHECK(s.max_overflow_seen <= 5, "overflow peak %d", s.max_overflow_seen);
  CHECK(st.total == 3 && st.checked_in == 3 && st.checked_out == 0, "at the end total %d in %d", st.total,
        st.checked_in);
  CHECK(st.timeouts == 0, "no timeouts: %llu", (unsigned long long)st.timeouts);
  char obs[160];
  snprintf(obs, sizeof obs, "peak overflow %d; %ld samples consistent; %d open at the end", s.max_overflow_seen,
           s.samples - s.bad, st.total);
  report("P2", "40 threads x 10 rounds (hold 5 ms) on pool 3+5",
         "overflow <= 5; total = idle + in-use + connecting at every sample; 3 open at the end", obs, -1,
         s.bad == 0 && st.total == 3);
  caracal_pool_release(p);
}

/* ---- P4: a stalled connect does not hold up a waiter ------------------ */

/* A listener that never accepts: a connect to it completes in the kernel
 * and libpq then waits for a reply that never comes (connect_timeout). */
static int silent_listener(int *port_out) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) return -1;
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  *port_out = ntohs(a.sin_port);
  return fd;
}

typedef struct Timed {
  caracal_Pool *pool;
  caracal_Conn *conn;
  double started, got;
  int rc;
} Timed;

static void *timed_checkout(void *arg) {
  Timed *t = arg;
  char err[1024];
  t->started = now_s();
  t->rc = caracal_pool_checkout(t->pool, "timed", &t->conn, err, sizeof err);
  t->got = now_s();
  return NULL;
}

TEST(p4_stalled_connect_does_not_block_a_waiter) {
  int silent_port = 0;
  int lfd = silent_listener(&silent_port);
  CHECK(lfd >= 0, "listener");
  /* Every connect tries the silent host first (2 s), then the server. */
  static char hosts[64], ports[64];
  snprintf(hosts, sizeof hosts, "127.0.0.1,%s", host);
  snprintf(ports, sizeof ports, "%d,%s", silent_port, port);
  const char *k[] = {"host", "port", "dbname", "user", "connect_timeout", NULL};
  const char *v[] = {hosts, ports, "caracal", "caracal", "2", NULL};
  caracal_Pool *p = make_pool_kv(k, v, 2, 1, 10.0);
  /* Two holders (their connects stall too: run them side by side). */
  Timed a = {.pool = p}, b = {.pool = p}, stalled = {.pool = p}, waiter = {.pool = p};
  pthread_t ta, tb, ts, tw;
  pthread_create(&ta, NULL, timed_checkout, &a);
  pthread_create(&tb, NULL, timed_checkout, &b);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  CHECK(a.rc == CARACAL_OK && b.rc == CARACAL_OK, "holders: %d %d", a.rc, b.rc);
  /* The third opens the last slot: its connect stalls 2 s. */
  pthread_create(&ts, NULL, timed_checkout, &stalled);
  usleep(200 * 1000);
  caracal_PoolStatus st = status(p);
  CHECK(st.connecting == 1 && st.total == 3, "one connect in progress: connecting %d total %d", st.connecting,
        st.total);
  /* The fourth must wait: no slot to open. A holder returns now. */
  pthread_create(&tw, NULL, timed_checkout, &waiter);
  usleep(200 * 1000);
  double returned = now_s();
  caracal_pool_checkin(a.conn);
  pthread_join(tw, NULL);
  double lag = waiter.got - returned;
  CHECK(waiter.rc == CARACAL_OK, "waiter rc %d", waiter.rc);
  CHECK(lag < 0.5, "the waiter got the returned connection %.3f s later", lag);
  pthread_join(ts, NULL);
  CHECK(stalled.rc == CARACAL_OK && stalled.got - stalled.started >= 1.9, "the stalled connect took %.2f s",
        stalled.got - stalled.started);
  char obs[160];
  snprintf(obs, sizeof obs, "waiter served %.3f s after the return; the stalled connect took %.2f s", lag,
           stalled.got - stalled.started);
  report("P4", "a connect stalls 2 s (silent first host) while a holder returns a connection",
         "the waiting thread gets the returned connection at once", obs, -1, waiter.rc == CARACAL_OK && lag < 0.5);
  if (waiter.conn) caracal_pool_checkin(waiter.conn);
  if (stalled.conn) caracal_pool_checkin(stalled.conn);
  if (b.conn) caracal_pool_checkin(b.conn);
  caracal_pool_release(p);
  close(lfd);
}

/* ---- P5: timeouts never early; invalidation wakes waiters ------------- */

static pthread_barrier_t barrier;
static void *p5a_worker(void *arg) {
  Timed *t = arg;
  pthread_barrier_wait(&barrier);
  timed_checkout(t);
  if (t->rc == CARACAL_OK) {
    usleep(1500 * 1000); /* hold past everyone's timeout */
    caracal_pool_checkin(t->conn);
    t->conn = NULL;
  }
  return NULL;
}

static atomic_int p5_served;
static void *p5b_waiter(void *arg) {
  caracal_Pool *p = arg;
  caracal_Conn *c = checkout(p, "p5b");
  if (c) {
    atomic_fetch_add(&p5_served, 1);
    caracal_conn_invalidate(c);
    caracal_pool_checkin(c);
  }
  return NULL;
}

TEST(p5_timeouts_are_never_early_and_invalidation_wakes_waiters) {
  caracal_Pool *p = make_pool(2, 1, 1.0);
  Timed t[10];
  pthread_t th[10];
  pthread_barrier_init(&barrier, NULL, 10);
  for (int i = 0; i < 10; i++) {
    t[i] = (Timed){.pool = p};
    pthread_create(&th[i], NULL, p5a_worker, &t[i]);
  }
  int early = 0, timeouts = 0, ok = 0;
  double min_wait = 1e9;
  for (int i = 0; i < 10; i++) {
    pthread_join(th[i], NULL);
    if (t[i].rc == CARACAL_ETIMEOUT) {
      timeouts++;
      double w = t[i].got - t[i].started;
      if (w < min_wait) min_wait = w;
      if (w < 1.0) early++;
    } else if (t[i].rc == CARACAL_OK) {
      ok++;
    }
  }
  pthread_barrier_destroy(&barrier);
  CHECK(ok == 3 && timeouts == 7, "ok %d timeouts %d", ok, timeouts);
  CHECK(early == 0, "%d timeouts came early (min %.3f s)", early, min_wait);
  caracal_pool_release(p);

  /* (b) one slot, a holder, waiters; the holder's connection is
   * invalidated and returned: a waiter gets a fresh connection, and so on
   * (each waiter invalidates and returns what it got): exactly one new
   * connect per invalidation. */
  p = make_pool(1, 0, 5.0);
  caracal_Conn *held = checkout(p, "held");
  uint64_t connects0 = status(p).connects;
  pthread_t tw[5];
  atomic_store(&p5_served, 0);
  for (int i = 0; i < 5; i++) pthread_create(&tw[i], NULL, p5b_waiter, p);
  for (int i = 0; i < 200 && status(p).waiting < 5; i++) usleep(5000);
  CHECK(status(p).waiting == 5, "five waiting: %d", status(p).waiting);
  caracal_conn_invalidate(held);
  caracal_pool_checkin(held);
  for (int i = 0; i < 5; i++) pthread_join(tw[i], NULL);
  int served = atomic_load(&p5_served);
  uint64_t new_connects = status(p).connects - connects0;
  CHECK(served == 5, "served %d of 5 waiters", served);
  CHECK(new_connects == 5, "one connect per invalidation: %llu", (unsigned long long)new_connects);
  char obs[200];
  snprintf(obs, sizeof obs, "7 timeouts, none early (min %.3f s); 5 waiters served by 5 new connects", min_wait);
  report("P5", "10 threads released at once on 2+1 (timeout 1 s); 5 waiters on 1 slot, holder invalidated",
         "no early timeout; each invalidation wakes one waiter with exactly one new connect", obs, -1,
         early == 0 && served == 5 && new_connects == 5);
  caracal_pool_release(p);
}

/* ---- P14: 100 threads, then close twice while in use ------------------ */

static atomic_int p14_queries, p14_errors, p14_closed_seen;
static atomic_int p14_stop;

static void *p14_worker(void *arg) {
  caracal_Pool *p = arg;
  while (!atomic_load(&p14_stop)) {
    caracal_Conn *c = NULL;
    char err[512];
    int rc = caracal_pool_checkout(p, "p14", &c, err, sizeof err);
    if (rc == CARACAL_ECLOSED) {
      atomic_fetch_add(&p14_closed_seen, 1);
      break;
    }
    if (rc != CARACAL_OK) {
      atomic_fetch_add(&p14_errors, 1);
      continue;
    }
    if (scalar(c, "select 1") == 1) atomic_fetch_add(&p14_queries, 1);
    else atomic_fetch_add(&p14_errors, 1);
    caracal_pool_checkin(c);
  }
  return NULL;
}

TEST(p14_hundred_threads_then_close_twice) {
  caracal_Pool *p = make_pool(5, 5, 30.0);
  pthread_t t[100];
  for (int i = 0; i < 100; i++) pthread_create(&t[i], NULL, p14_worker, p);
  usleep((useconds_t)(load_seconds < 2 ? load_seconds : 2) * 1000 * 1000);
  caracal_pool_close(p);
  caracal_pool_close(p);
  atomic_store(&p14_stop, 1);
  for (int i = 0; i < 100; i++) pthread_join(t[i], NULL);
  caracal_Conn *c = NULL;
  char err[256];
  int rc = caracal_pool_checkout(p, "late", &c, err, sizeof err);
  caracal_PoolStatus st = status(p);
  CHECK(rc == CARACAL_ECLOSED, "checkout after close: %d", rc);
  CHECK(atomic_load(&p14_queries) > 0 && atomic_load(&p14_errors) == 0, "queries %d errors %d",
        atomic_load(&p14_queries), atomic_load(&p14_errors));
  CHECK(st.total == 0 && st.checked_out == 0, "every connection closed: total %d", st.total);
  char obs[160];
  snprintf(obs, sizeof obs, "%d queries, 0 errors; closed twice; checkout after close refused; 0 open",
           atomic_load(&p14_queries));
  report("P14", "100 threads in query loops, pool closed twice while in use",
         "no errors, close idempotent, in-use closed on return, acquire after close fails", obs, -1,
         rc == CARACAL_ECLOSED && st.total == 0 && atomic_load(&p14_errors) == 0);
  caracal_pool_release(p);
}

int main(void) {
  host = getenv("CARACAL_TEST_HOST");
  port = getenv("CARACAL_TEST_PORT");
  if (!host || !port) {
    printf("1..0 # SKIP CARACAL_TEST_HOST/PORT not set (run through spec/run.sh)\n");
    return 0;
  }
  vals[0] = host;
  vals[1] = port;
  const char *secs = getenv("CARACAL_LOAD_SECONDS");
  if (secs && atof(secs) > 0) load_seconds = atof(secs);
  RUN(load_exact_rows_and_consistent_counters, "load: threads x checkouts, exact rows, counters consistent at every sample");
  RUN(p1_sixteenth_checkout_times_out_on_time, "P1: a 16th checkout of 10+5 times out after 2.0 s, under 2.5 s");
  RUN(p2_forty_threads_on_three_plus_five, "P2: 40 threads x 10 rounds on 3+5: overflow bounded, 3 left open");
  RUN(p4_stalled_connect_does_not_block_a_waiter, "P4: a stalled connect does not hold up a waiter");
  RUN(p5_timeouts_are_never_early_and_invalidation_wakes_waiters, "P5: no early timeout; invalidation wakes waiters");
  RUN(p14_hundred_threads_then_close_twice, "P14: 100 threads, then close twice while in use");
  return tap_done();
}
