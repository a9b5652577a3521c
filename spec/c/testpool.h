/*
 * testpool.h: what the C pool tests share (spec/c/test_pool.c,
 * spec/reliability/test_load.c): a clock, a pool made from libpq
 * keywords, and checkout/scalar/status shorthands that print why a call
 * failed as a TAP comment.
 */
#ifndef CARACAL_TESTPOOL_H
#define CARACAL_TESTPOOL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "caracal.h"

static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A pool on keywords/values with these limits; extra (or the defaults)
 * gives the other settings. Exits the test program when it cannot. */
static inline caracal_Pool *pool_from(const char *const *kw, const char *const *vals, int size, int overflow,
                                      double timeout, const caracal_PoolConfig *extra) {
  caracal_PoolConfig cfg;
  if (extra) cfg = *extra;
  else caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = size;
  cfg.max_overflow = overflow;
  cfg.pool_timeout = timeout;
  caracal_Pool *p = NULL;
  char err[512];
  if (caracal_pool_new(&cfg, &p, err, sizeof err) != CARACAL_OK) {
    printf("# pool_new: %s\n", err);
    exit(1);
  }
  return p;
}

static inline caracal_Conn *checkout(caracal_Pool *p, const char *holder) {
  caracal_Conn *c = NULL;
  char err[1024];
  int rc = caracal_pool_checkout(p, holder, &c, err, sizeof err);
  if (rc != CARACAL_OK) printf("# checkout failed (%d): %s\n", rc, err);
  return c;
}

/* The first column of the first row as a number, or -1. */
static inline long scalar(caracal_Conn *c, const char *sql) {
  PGresult *r = PQexec(caracal_conn_pg(c), sql);
  long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) ? atol(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  return v;
}

static inline caracal_PoolStatus status(caracal_Pool *p) {
  caracal_PoolStatus st;
  caracal_pool_status(p, &st);
  return st;
}

#endif
