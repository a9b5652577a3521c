/*
 * libpq_floor.c: the benchmark's work done with raw libpq, the floor every
 * other variant is compared with (bench/run.sh runs it).
 *
 *   libpq_floor MODE CONNINFO N [READS]
 *
 *   prepared  N prepared INSERT ... RETURNING *, one transaction
 *   commit    N prepared INSERT ... RETURNING *, each its own transaction
 *   pipeline  the same N inserts in pipeline mode, one transaction
 *   copy      COPY ledger_events FROM STDIN (text), one transaction
 *   read      READS prepared SUM(cost) per agent over a time range
 *
 * The events are the deterministic ones of bench/data.lua, identical to what the
 * Lua, Python and LuaSQL variants write. Prints one JSON line: variant, n,
 * seconds, rate (per second), rss_kb (peak, VmHWM) and, for read, check
 * (the sum of every total, exact).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#define NAGENTS 16
#define T0_US INT64_C(1704067200000000) /* 2024-01-01T00:00:00Z */
#define STEP_US INT64_C(1000003)
#define READ_WINDOW 200 /* events per read range */

/* The very statement Caracal's flush sends (so the ratios measure the
 * binding, not a choice of SQL): every column back, in binary. */
static const char INSERT_SQL[] =
  "INSERT INTO \"ledger_events\" (\"agent_id\", \"timestamp\", \"resource_type\", \"quantity\", \"cost\", "
  "\"currency\", \"metadata\", \"merkle_root_id\") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *";
static const char READ_SQL[] =
  "SELECT agent_id, SUM(cost) AS total FROM ledger_events "
  "WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 GROUP BY agent_id ORDER BY agent_id";
static const char COPY_SQL[] =
  "COPY ledger_events (agent_id, \"timestamp\", resource_type, quantity, cost, currency, metadata) FROM STDIN";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long peak_rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kb;
}

static void die(PGconn *pg, const char *what) {
  fprintf(stderr, "libpq_floor: %s: %s", what, PQerrorMessage(pg));
  exit(1);
}

static void check(PGconn *pg, PGresult *r, ExecStatusType want, const char *what) {
  if (PQresultStatus(r) != want) {
    fprintf(stderr, "libpq_floor: %s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(pg);
    exit(1);
  }
  PQclear(r);
}

static void exec(PGconn *pg, const char *sql) {
  check(pg, PQexec(pg, sql), PGRES_COMMAND_OK, sql);
}

static void format_ts(int64_t us, char *out, size_t len) {
  time_t secs = (time_t)(us / 1000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  snprintf(out, len, "%04d-%02d-%02d %02d:%02d:%02d.%06d+00", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(us % 1000000));
}

/* Event i (1-based), as text parameters. */
typedef struct Event {
  char agent[40], ts[96], resource[32], quantity[40], cost[24], currency[4], metadata[32];
  const char *values[8]; /* the last: merkle_root_id, NULL */
} Event;

static void make_event(Event *e, long i) {
  snprintf(e->agent, sizeof e->agent, "00000000-0000-4000-8000-%012ld", i % NAGENTS + 1);
  format_ts(T0_US + i * STEP_US, e->ts, sizeof e->ts);
  snprintf(e->resource, sizeof e->resource, "api.bench.%ld", i % 7);
  snprintf(e->quantity, sizeof e->quantity, "%ld.%06ld", i, (i * 7919) % 1000000);
  snprintf(e->cost, sizeof e->cost, "0.%06ld", (i * 37) % 1000000);
  snprintf(e->currency, sizeof e->currency, "%s", i % 5 == 0 ? "EUR" : "USD");
  snprintf(e->metadata, sizeof e->metadata, "{\"seq\": %ld}", i);
  e->values[0] = e->agent;
  e->values[1] = e->ts;
  e->values[2] = e->resource;
  e->values[3] = e->quantity;
  e->values[4] = e->cost;
  e->values[5] = e->currency;
  e->values[6] = e->metadata;
  e->values[7] = NULL;
}

/* The generated event_id (column 1) of a binary result. */
static long event_id_of(const PGresult *r) {
  const unsigned char *p = (const unsigned char *)PQgetvalue(r, 0, 0);
  uint64_t v = 0;
  for (int k = 0; k < 8; k++) v = v << 8 | p[k];
  return (long)v;
}

static Event *make_events(long n) {
  Event *ev = calloc((size_t)n + 1, sizeof *ev);
  if (!ev) exit(1);
  for (long i = 1; i <= n; i++) make_event(&ev[i], i);
  return ev;
}

/* Per row: send, wait, read the generated key. */
static void run_rows(PGconn *pg, const Event *ev, long n, int one_transaction) {
  check(pg, PQprepare(pg, "ins", INSERT_SQL, 8, NULL), PGRES_COMMAND_OK, "prepare");
  if (one_transaction) exec(pg, "BEGIN");
  long sum = 0;
  for (long i = 1; i <= n; i++) {
    PGresult *r = PQexecPrepared(pg, "ins", 8, ev[i].values, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) check(pg, r, PGRES_TUPLES_OK, "insert");
    sum += event_id_of(r);
    PQclear(r);
  }
  if (one_transaction) exec(pg, "COMMIT");
  if (sum <= 0) exit(1);
}

/* Read the results that have arrived (all of them when block). */
static long pipeline_read(PGconn *pg, long *done, long sent, int block) {
  long sum = 0;
  while (*done < sent) {
    if (!block && PQisBusy(pg)) break;
    PGresult *r = PQgetResult(pg);
    if (!r) {
      (*done)++;
      continue;
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK) check(pg, r, PGRES_TUPLES_OK, "pipelined insert");
    sum += event_id_of(r);
    PQclear(r);
  }
  return sum;
}

static void run_pipeline(PGconn *pg, const Event *ev, long n) {
  check(pg, PQprepare(pg, "ins", INSERT_SQL, 8, NULL), PGRES_COMMAND_OK, "prepare");
  exec(pg, "BEGIN");
  if (!PQenterPipelineMode(pg)) die(pg, "enter pipeline mode");
  long done = 0, sent = 0, sum = 0;
  for (long i = 1; i <= n; i++) {
    if (!PQsendQueryPrepared(pg, "ins", 8, ev[i].values, NULL, NULL, 1)) die(pg, "send");
    if (++sent % 64 == 0) {
      if (!PQconsumeInput(pg)) die(pg, "read");
      sum += pipeline_read(pg, &done, sent, 0);
    }
  }
  if (!PQpipelineSync(pg)) die(pg, "sync");
  sum += pipeline_read(pg, &done, sent, 1);
  PGresult *r = PQgetResult(pg);
  if (PQresultStatus(r) != PGRES_PIPELINE_SYNC) check(pg, r, PGRES_PIPELINE_SYNC, "sync");
  PQclear(r);
  if (!PQexitPipelineMode(pg)) die(pg, "exit pipeline mode");
  exec(pg, "COMMIT");
  if (sum <= 0) exit(1);
}

static void run_copy(PGconn *pg, const Event *ev, long n) {
  exec(pg, "BEGIN");
  check(pg, PQexec(pg, COPY_SQL), PGRES_COPY_IN, "copy");
  size_t cap = 1 << 17, len = 0;
  char *buf = malloc(cap);
  for (long i = 1; i <= n; i++) {
    const Event *e = &ev[i];
    /* No value of this data needs COPY escaping. */
    len += (size_t)snprintf(buf + len, cap - len, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e->agent, e->ts,
                            e->resource, e->quantity, e->cost, e->currency, e->metadata);
    if (len >= 65536) {
      if (PQputCopyData(pg, buf, (int)len) != 1) die(pg, "copy data");
      len = 0;
    }
  }
  if (len && PQputCopyData(pg, buf, (int)len) != 1) die(pg, "copy data");
  if (PQputCopyEnd(pg, NULL) != 1) die(pg, "copy end");
  check(pg, PQgetResult(pg), PGRES_COMMAND_OK, "copy");
  PGresult *r;
  while ((r = PQgetResult(pg)) != NULL) PQclear(r);
  exec(pg, "COMMIT");
  free(buf);
}

/* NUMERIC text with at most 6 decimals to millionths. */
static int64_t micros_of(const char *s) {
  int neg = *s == '-';
  if (neg) s++;
  int64_t whole = 0, frac = 0;
  while (*s >= '0' && *s <= '9') whole = whole * 10 + (*s++ - '0');
  int digits = 0;
  if (*s == '.') {
    s++;
    while (*s >= '0' && *s <= '9' && digits < 6) {
      frac = frac * 10 + (*s++ - '0');
      digits++;
    }
  }
  while (digits++ < 6) frac *= 10;
  int64_t v = whole * 1000000 + frac;
  return neg ? -v : v;
}

/* The read query over READ_WINDOW events starting at a spread of points. */
static int64_t run_reads(PGconn *pg, long n, long reads) {
  check(pg, PQprepare(pg, "rd", READ_SQL, 2, NULL), PGRES_COMMAND_OK, "prepare");
  int64_t total = 0;
  long span = n > READ_WINDOW ? n - READ_WINDOW : 1;
  for (long q = 0; q < reads; q++) {
    long first = 1 + (q * 7919) % span;
    char from[96], to[96];
    format_ts(T0_US + first * STEP_US, from, sizeof from);
    format_ts(T0_US + (first + READ_WINDOW) * STEP_US, to, sizeof to);
    const char *params[2] = {from, to};
    PGresult *r = PQexecPrepared(pg, "rd", 2, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) check(pg, r, PGRES_TUPLES_OK, "read");
    for (int row = 0; row < PQntuples(r); row++) {
      (void)PQgetvalue(r, row, 0);
      total += micros_of(PQgetvalue(r, row, 1));
    }
    PQclear(r);
  }
  return total;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: libpq_floor prepared|commit|pipeline|copy|read CONNINFO N [READS]\n");
    return 2;
  }
  const char *mode = argv[1];
  long n = atol(argv[3]);
  long reads = argc > 4 ? atol(argv[4]) : 2000;
  PGconn *pg = PQconnectdb(argv[2]);
  if (PQstatus(pg) != CONNECTION_OK) die(pg, "connect");
  Event *ev = strcmp(mode, "read") == 0 ? NULL : make_events(n);
  int64_t total = 0;
  long work = n;
  double t = now_s();
  if (strcmp(mode, "prepared") == 0) run_rows(pg, ev, n, 1);
  else if (strcmp(mode, "commit") == 0) run_rows(pg, ev, n, 0);
  else if (strcmp(mode, "pipeline") == 0) run_pipeline(pg, ev, n);
  else if (strcmp(mode, "copy") == 0) run_copy(pg, ev, n);
  else if (strcmp(mode, "read") == 0) {
    total = run_reads(pg, n, reads);
    work = reads;
  } else {
    fprintf(stderr, "libpq_floor: unknown mode %s\n", mode);
    return 2;
  }
  double secs = now_s() - t;
  PQfinish(pg);
  printf("{\"variant\":\"c_%s\",\"n\":%ld,\"seconds\":%.6f,\"rate\":%.1f,\"rss_kb\":%ld", mode, work,
         secs, (double)work / secs, peak_rss_kb());
  if (strcmp(mode, "read") == 0)
    printf(",\"check\":\"%" PRId64 ".%06" PRId64 "\"", total / 1000000, total % 1000000);
  printf("}\n");
  free(ev);
  return 0;
}
