/*
 * stmtcache.c: prepared statements cached per connection.
 *
 * Every parameterised statement is prepared once per connection and then
 * executed by name: the server parses and plans it once, parameters never
 * touch the SQL text, and Describe tells us the parameter and result types
 * up front, so results can come back in binary and be decoded in C.
 *
 * The cache is a hash table with an LRU list, bounded at STMT_CACHE_MAX;
 * the least recently used statement is deallocated on the server when the
 * bound is reached. It lives and dies with its PGconn: a replaced
 * connection starts empty.
 *
 * Behind a transaction pooler (conn->pooled) a named statement prepared
 * on one server connection is gone at the next transaction, which may run
 * on another (PgBouncer before 1.21 does not track them). There nothing is
 * named: the cache keeps only what Describe said (parameter types, binary
 * results), and each run sends Parse/Bind/Execute of the unnamed statement
 * with those types in one round trip (PQsendQueryParams, lconn.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define STMT_CACHE_MAX 256
#define STMT_BUCKETS 512

struct StmtCache {
  Stmt *buckets[STMT_BUCKETS];
  Stmt *lru_head, *lru_tail; /* head = most recently used */
  int count;
};

static unsigned hash_sql(const char *s) {
  unsigned h = 2166136261u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static void lru_unlink(StmtCache *c, Stmt *s) {
  if (s->lru_prev) s->lru_prev->lru_next = s->lru_next;
  else c->lru_head = s->lru_next;
  if (s->lru_next) s->lru_next->lru_prev = s->lru_prev;
  else c->lru_tail = s->lru_prev;
  s->lru_prev = s->lru_next = NULL;
}

static void lru_push_front(StmtCache *c, Stmt *s) {
  s->lru_prev = NULL;
  s->lru_next = c->lru_head;
  if (c->lru_head) c->lru_head->lru_prev = s;
  c->lru_head = s;
  if (!c->lru_tail) c->lru_tail = s;
}

static void stmt_free(Stmt *s) {
  free(s->sql);
  free(s->param_types);
  free(s);
}

/* Remove from the table and the LRU list, without touching the server. */
static void cache_remove(StmtCache *c, Stmt *s) {
  Stmt **pp = &c->buckets[s->hash % STMT_BUCKETS];
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  lru_unlink(c, s);
  c->count--;
  stmt_free(s);
}

void stmt_forget(caracal_Conn *conn, Stmt *s) {
  if (conn->stmts && s) cache_remove(conn->stmts, s);
}

void stmt_forget_all(caracal_Conn *conn) {
  stmt_cache_free(conn->stmts);
  conn->stmts = NULL;
}

void stmt_cache_free(StmtCache *c) {
  if (!c) return;
  Stmt *s = c->lru_head;
  while (s) {
    Stmt *next = s->lru_next;
    stmt_free(s);
    s = next;
  }
  free(c);
}

/* Column types we decode from binary; anything else makes the whole
 * result come back as text (libpq has one format switch per result). */
static bool stmt_describe(Stmt *s, const PGresult *desc) {
  s->nparams = PQnparams(desc);
  if (s->nparams > 0) {
    s->param_types = malloc((size_t)s->nparams * sizeof *s->param_types);
    if (!s->param_types) return false;
    for (int i = 0; i < s->nparams; i++) s->param_types[i] = PQparamtype(desc, i);
  }
  s->binary = res_binary_ok(desc);
  return true;
}

/* The cache of a connection, made on first use (NULL: out of memory). */
static StmtCache *cache_of(caracal_Conn *conn) {
  if (!conn->stmts) conn->stmts = calloc(1, sizeof *conn->stmts);
  return conn->stmts;
}

Stmt *stmt_find(caracal_Conn *conn, const char *sql) {
  StmtCache *c = conn->stmts;
  if (!c) return NULL;
  unsigned h = hash_sql(sql);
  for (Stmt *s = c->buckets[h % STMT_BUCKETS]; s; s = s->next) {
    if (s->hash == h && strcmp(s->sql, sql) == 0) {
      if (c->lru_head != s) {
        lru_unlink(c, s);
        lru_push_front(c, s);
      }
      return s;
    }
  }
  return NULL;
}

Stmt *stmt_victim(caracal_Conn *conn) {
  StmtCache *c = conn->stmts;
  return c && c->count >= STMT_CACHE_MAX ? c->lru_tail : NULL;
}

Stmt *stmt_new(caracal_Conn *conn, const char *sql) {
  StmtCache *c = cache_of(conn);
  if (!c) return NULL;
  Stmt *s = calloc(1, sizeof *s);
  if (!s || !(s->sql = strdup(sql))) {
    free(s);
    return NULL;
  }
  s->hash = hash_sql(sql);
  /* Numbered per connection, never per cache: a forgotten cache (after a
   * DEALLOCATE ALL that may have failed) must not reuse a name the server
   * might still hold. Pooled: the unnamed statement. */
  if (conn->pooled) s->name[0] = '\0';
  else snprintf(s->name, sizeof s->name, "caracal_%lu", ++conn->stmt_seq);
  return s;
}

bool stmt_add(caracal_Conn *conn, Stmt *s, const PGresult *desc) {
  StmtCache *c = cache_of(conn);
  if (!c || !stmt_describe(s, desc)) return false;
  s->next = c->buckets[s->hash % STMT_BUCKETS];
  c->buckets[s->hash % STMT_BUCKETS] = s;
  lru_push_front(c, s);
  c->count++;
  return true;
}

void stmt_discard(Stmt *s) {
  if (s) stmt_free(s);
}

/* Pooled: Prepare and Describe the unnamed statement in one pipeline, so
 * both reach the same server connection. Returns Describe's result, or
 * NULL with *failed holding the server's error (NULL: connection lost). */
static PGresult *describe_unnamed(PGconn *pg, const char *sql, PGresult **failed) {
  PGresult *desc = NULL;
  *failed = NULL;
  if (!PQenterPipelineMode(pg)) return NULL;
  if (PQsendPrepare(pg, "", sql, 0, NULL) && PQsendDescribePrepared(pg, "") && PQpipelineSync(pg)) {
    for (;;) {
      PGresult *r = PQgetResult(pg);
      if (!r) {
        if (PQstatus(pg) != CONNECTION_OK) break;
        continue; /* the end of one command's results: the next follows */
      }
      ExecStatusType st = PQresultStatus(r);
      if (st == PGRES_PIPELINE_SYNC) {
        PQclear(r);
        break;
      }
      if (st == PGRES_COMMAND_OK) { /* Prepare's, then Describe's: keep the last */
        PQclear(desc);
        desc = r;
      } else if (st == PGRES_PIPELINE_ABORTED || *failed) {
        PQclear(r);
      } else {
        *failed = r;
      }
    }
  }
  PQexitPipelineMode(pg);
  if (*failed || PQstatus(pg) != CONNECTION_OK) {
    PQclear(desc);
    return NULL;
  }
  return desc;
}

/* The blocking path, built from the same steps as lconn.c's state machine. */
Stmt *stmt_get(caracal_Conn *conn, const char *sql, PGresult **failed) {
  *failed = NULL;
  Stmt *s = stmt_find(conn, sql);
  if (s) return s;
  if (conn->pooled) {
    Stmt *old = stmt_victim(conn);
    if (old) stmt_forget(conn, old); /* nothing to deallocate on the server */
    if (!(s = stmt_new(conn, sql))) return NULL;
    PGresult *d = describe_unnamed(conn->pg, sql, failed);
    if (!d || !stmt_add(conn, s, d)) {
      if (d) *failed = d; /* out of memory: as below */
      stmt_free(s);
      return NULL;
    }
    PQclear(d);
    return s;
  }
  Stmt *old = stmt_victim(conn);
  if (old) {
    char dealloc[48];
    snprintf(dealloc, sizeof dealloc, "DEALLOCATE %s", old->name);
    PQclear(PQexec(conn->pg, dealloc));
    stmt_forget(conn, old);
  }
  if (!(s = stmt_new(conn, sql))) return NULL;
  PGresult *r = PQprepare(conn->pg, s->name, sql, 0, NULL);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    *failed = r;
    stmt_free(s);
    return NULL;
  }
  PQclear(r);
  r = PQdescribePrepared(conn->pg, s->name);
  if (PQresultStatus(r) != PGRES_COMMAND_OK || !stmt_add(conn, s, r)) {
    *failed = r;
    stmt_free(s);
    return NULL;
  }
  PQclear(r);
  return s;
}
