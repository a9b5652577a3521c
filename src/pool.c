/*
 * pool.c: a thread-safe pool of libpq connections with SQLAlchemy's
 * QueuePool semantics. It knows nothing of Lua.
 *
 * - pool_size connections are kept; up to max_overflow more are opened on
 *   demand and closed when they come back to a full pool.
 * - Idle connections are a stack: the most recently used is reused first,
 *   so the rest can age out.
 * - A checkout waits up to pool_timeout, then fails naming the limits and
 *   who holds every connection.
 * - Connecting, resetting and closing happen outside the lock: a slow
 *   connect never blocks a checkin. The fast path (an idle connection
 *   that needs nothing) takes the lock and makes no system call.
 * - Connections are replaced at checkout when older than pool_recycle or
 *   opened before the pool was invalidated (a connection found dead marks
 *   every older one stale, since they likely died with the same server).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

struct caracal_Pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs;
  bool closed;

  /* configuration (copied) */
  char **keywords, **values;
  char *password; /* for redaction of libpq's messages */
  int size, max_overflow;
  double timeout, recycle, jitter;
  bool pre_ping;
  caracal_Reset reset;
  caracal_LogFn log;
  void *log_ud;
  caracal_ClockFn clock;
  void *clock_ud;

  /* state, under mu */
  caracal_Conn **idle; /* stack, top = most recently used */
  int nidle;
  caracal_Conn *in_use; /* doubly linked */
  caracal_Conn *deferred; /* returned from finalizers, awaiting reset */
  int checked_out, connecting, waiting;
  double invalidated_at; /* connections created before this are stale */
  unsigned rng;          /* jitter, under mu */
  uint64_t connects, discards, timeouts, recycles;
};

/* ---- time, logging -------------------------------------------------------- */

static double now_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double pool_now(caracal_Pool *p) {
  return p->clock ? p->clock(p->clock_ud) : now_monotonic();
}

/* Log through the host's logger; every message is redacted first. */
static void pool_log(caracal_Pool *p, int level, const char *fmt, ...) {
  if (!p->log) return;
  char raw[1024], safe[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(raw, sizeof raw, fmt, ap);
  va_end(ap);
  caracal_redact(raw, p->password, safe, sizeof safe);
  p->log(p->log_ud, level, safe);
}

/* ---- configuration -------------------------------------------------------- */

void caracal_pool_config_init(caracal_PoolConfig *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->pool_size = 10;
  cfg->max_overflow = 5;
  cfg->pool_timeout = 30.0;
  cfg->pool_recycle = 3600.0;
  cfg->recycle_jitter = 0.02;
  cfg->reset_on_return = CARACAL_RESET_AUTO;
}

static char **copy_strv(const char *const *v, int n) {
  char **out = calloc((size_t)n + 1, sizeof *out);
  if (!out) return NULL;
  for (int i = 0; i < n; i++) {
    out[i] = strdup(v[i] ? v[i] : "");
    if (!out[i]) {
      for (int j = 0; j < i; j++) free(out[j]);
      free(out);
      return NULL;
    }
  }
  return out;
}

static void free_strv(char **v) {
  if (!v) return;
  for (char **s = v; *s; s++) free(*s);
  free(v);
}

static int config_error(char *err, size_t errlen, const char *msg, double got) {
  snprintf(err, errlen, "%s, got %g", msg, got);
  return CARACAL_EINVAL;
}

int caracal_pool_new(const caracal_PoolConfig *cfg, caracal_Pool **out, char *err,
                     size_t errlen) {
  *out = NULL;
  if (cfg->pool_size < 1) return config_error(err, errlen, "pool_size must be an integer >= 1", cfg->pool_size);
  if (cfg->max_overflow < -1)
    return config_error(err, errlen, "max_overflow must be an integer >= 0 (or -1 for no limit)", cfg->max_overflow);
  if (!(cfg->pool_timeout >= 0) || cfg->pool_timeout > 1e7)
    return config_error(err, errlen, "pool_timeout must be a number of seconds >= 0", cfg->pool_timeout);
  if (cfg->pool_recycle != cfg->pool_recycle)
    return config_error(err, errlen, "pool_recycle must be a number of seconds", cfg->pool_recycle);
  if (!(cfg->recycle_jitter >= 0 && cfg->recycle_jitter < 1))
    return config_error(err, errlen, "recycle_jitter must be in [0, 1)", cfg->recycle_jitter);

  caracal_Pool *p = calloc(1, sizeof *p);
  if (!p) goto nomem;
  int n = 0;
  if (cfg->keywords)
    while (cfg->keywords[n]) n++;
  static const char *const none[] = {NULL};
  p->keywords = copy_strv(cfg->keywords ? cfg->keywords : none, n);
  p->values = copy_strv(cfg->values ? cfg->values : none, n);
  if (!p->keywords || !p->values) goto nomem;
  for (int i = 0; i < n; i++)
    if (strcmp(p->keywords[i], "password") == 0 && p->values[i][0]) p->password = p->values[i];
  p->idle = calloc((size_t)cfg->pool_size, sizeof *p->idle);
  if (!p->idle) goto nomem;
  p->refs = 1;
  p->size = cfg->pool_size;
  p->max_overflow = cfg->max_overflow;
  p->timeout = cfg->pool_timeout;
  p->recycle = cfg->pool_recycle;
  p->jitter = cfg->recycle_jitter;
  p->pre_ping = cfg->pre_ping != 0;
  p->reset = cfg->reset_on_return;
  p->log = cfg->log;
  p->log_ud = cfg->log_ud;
  p->clock = cfg->clock;
  p->clock_ud = cfg->clock_ud;
  p->rng = (unsigned)(now_monotonic() * 1e6) | 1u;
  p->invalidated_at = -1e300;

  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_mutex_init(&p->mu, NULL);
  *out = p;
  return CARACAL_OK;

nomem:
  if (p) {
    free_strv(p->keywords);
    free_strv(p->values);
    free(p->idle);
    free(p);
  }
  snprintf(err, errlen, "out of memory creating the pool");
  return CARACAL_ENOMEM;
}

caracal_Pool *caracal_pool_retain(caracal_Pool *p) {
  pthread_mutex_lock(&p->mu);
  p->refs++;
  pthread_mutex_unlock(&p->mu);
  return p;
}

/* ---- connections ---------------------------------------------------------- */

void pool_clear_notices(caracal_Conn *c) {
  for (int i = 0; i < c->nnotices; i++) free(c->notices[i]);
  c->nnotices = 0;
}

/* libpq's notice receiver: keep the message for the borrower to read. */
static void notice_receiver(void *arg, const PGresult *res) {
  caracal_Conn *c = arg;
  const char *msg = PQresultErrorMessage(res);
  if (!msg) return;
  if (c->nnotices == CARACAL_MAX_NOTICES) {
    free(c->notices[0]);
    memmove(c->notices, c->notices + 1, sizeof c->notices[0] * (CARACAL_MAX_NOTICES - 1));
    c->nnotices--;
  }
  char *copy = strdup(msg);
  if (copy) c->notices[c->nnotices++] = copy;
}

static void conn_destroy(caracal_Conn *c) {
  if (!c) return;
  pool_clear_notices(c);
  if (c->pg) PQfinish(c->pg);
  stmt_cache_free(c->stmts);
  free(c);
}

/* Open a new libpq connection (called without the lock). On failure the
 * message, redacted, goes to err and NULL is returned. */
static caracal_Conn *conn_open(caracal_Pool *p, char *err, size_t errlen) {
  PGconn *pg = PQconnectdbParams((const char *const *)p->keywords,
                                 (const char *const *)p->values, 0);
  if (!pg || PQstatus(pg) != CONNECTION_OK) {
    char raw[1024];
    snprintf(raw, sizeof raw, "could not connect to the database: %s",
             pg ? PQerrorMessage(pg) : "out of memory");
    size_t n = caracal_redact(raw, p->password, err, errlen);
    while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' ')) err[--n] = '\0';
    if (pg) PQfinish(pg);
    return NULL;
  }
  caracal_Conn *c = calloc(1, sizeof *c);
  if (!c) {
    PQfinish(pg);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->pg = pg;
  c->pool = p;
  PQsetNoticeReceiver(pg, notice_receiver, c);
  return c;
}

/* Stamp a fresh connection's lifetime (under the lock: uses the rng). */
static void conn_stamp(caracal_Pool *p, caracal_Conn *c, double now) {
  c->created_at = now;
  if (p->recycle > 0) {
    p->rng = p->rng * 1103515245u + 12345u;
    double r = (double)((p->rng >> 8) & 0xffff) / 65536.0;
    c->expires_at = now + p->recycle * (1.0 - p->jitter * r);
  } else {
    c->expires_at = 0;
  }
}

static bool conn_expired(caracal_Pool *p, caracal_Conn *c, double now) {
  return (c->expires_at > 0 && now >= c->expires_at) || c->created_at < p->invalidated_at;
}

static void inuse_link(caracal_Pool *p, caracal_Conn *c) {
  c->prev = NULL;
  c->next = p->in_use;
  if (p->in_use) p->in_use->prev = c;
  p->in_use = c;
}

static void inuse_unlink(caracal_Pool *p, caracal_Conn *c) {
  if (c->prev) c->prev->next = c->next;
  else p->in_use = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* Run one command, true when it succeeded (used for reset and pre-ping). */
static bool conn_run(PGconn *pg, const char *sql) {
  PGresult *r = PQexec(pg, sql);
  ExecStatusType st = PQresultStatus(r);
  PQclear(r);
  /* Drain a multi-statement reset. */
  return (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) &&
         PQstatus(pg) == CONNECTION_OK;
}

/*
 * Make a returned connection fit for the next borrower, without the lock.
 * Returns false when it must be closed instead: the server went away, the
 * rollback or reset failed, or it is still not idle afterwards.
 */
static bool conn_reset(caracal_Pool *p, caracal_Conn *c) {
  if (c->invalid || PQstatus(c->pg) != CONNECTION_OK) return false;
  PGTransactionStatusType ts = PQtransactionStatus(c->pg);
  if (ts == PQTRANS_ACTIVE) {
    /* A query still running (an abandoned coroutine): cancel it and drain. */
    PGcancel *cancel = PQgetCancel(c->pg);
    char buf[256];
    if (cancel) {
      PQcancel(cancel, buf, sizeof buf);
      PQfreeCancel(cancel);
    }
    PGresult *r;
    while ((r = PQgetResult(c->pg)) != NULL) PQclear(r);
    ts = PQtransactionStatus(c->pg);
  }
  if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
    if (!conn_run(c->pg, "ROLLBACK")) return false;
  }
  if (c->dirty || p->reset == CARACAL_RESET_ALWAYS) {
    /* Everything a borrower can leave behind except our own prepared
     * statements, which DISCARD ALL would drop along with the cache. */
    if (!conn_run(c->pg, "RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); "
                         "CLOSE ALL; DISCARD TEMP; DISCARD SEQUENCES"))
      return false;
    c->dirty = false;
  }
  return PQtransactionStatus(c->pg) == PQTRANS_IDLE;
}

static bool conn_needs_reset(caracal_Pool *p, caracal_Conn *c) {
  return c->invalid || c->dirty || p->reset == CARACAL_RESET_ALWAYS ||
         PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) != PQTRANS_IDLE;
}

/* Holders of every checked-out connection, for the timeout message. */
static void describe_holders(caracal_Pool *p, double now, char *buf, size_t len) {
  size_t used = 0;
  int shown = 0, total = 0;
  buf[0] = '\0';
  for (caracal_Conn *c = p->in_use; c; c = c->next) {
    total++;
    if (shown >= 20 || used + 2 >= len) continue;
    int w = snprintf(buf + used, len - used, "%s%s (%.1f s)", shown ? ", " : "",
                     c->holder[0] ? c->holder : "unknown", now - c->checked_out_at);
    if (w < 0 || (size_t)w >= len - used) break;
    used += (size_t)w;
    shown++;
  }
  if (total > shown && used + 32 < len)
    snprintf(buf + used, len - used, ", and %d more", total - shown);
}

/* Reset and return parked connections (from checkin_deferred). */
static void drain_deferred(caracal_Pool *p) {
  pthread_mutex_lock(&p->mu);
  caracal_Conn *list = p->deferred;
  __atomic_store_n(&p->deferred, NULL, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&p->mu);
  while (list) {
    caracal_Conn *c = list;
    list = c->next_parked;
    c->next_parked = NULL;
    c->parked = false;
    caracal_pool_checkin(c);
  }
}

static int total_count(caracal_Pool *p) {
  return p->nidle + p->checked_out + p->connecting;
}

static bool may_open(caracal_Pool *p) {
  return p->max_overflow < 0 || total_count(p) < p->size + p->max_overflow;
}

/* The timeout failure, with the lock held (it is released): counts the
 * timeout and names the limits and every holder. */
static int checkout_timeout(caracal_Pool *p, double waited, char *err, size_t errlen) {
  char holders[700];
  describe_holders(p, pool_now(p), holders, sizeof holders);
  p->timeouts++;
  int limit_overflow = p->max_overflow;
  int size = p->size;
  pthread_mutex_unlock(&p->mu);
  snprintf(err, errlen,
           "pool limit of size %d overflow %d reached, connection timed out after %.2f s "
           "(pool_timeout); checked out by: %s",
           size, limit_overflow, waited, holders[0] ? holders : "nobody");
  return CARACAL_ETIMEOUT;
}

/*
 * Both checkouts. wait: block up to pool_timeout for a connection to come
 * back; otherwise return CARACAL_EAGAIN at once (or CARACAL_ETIMEOUT once
 * the caller's own count of seconds waited reaches pool_timeout).
 */
static int checkout(caracal_Pool *p, const char *holder, bool wait, double waited,
                    caracal_Conn **out, char *err, size_t errlen) {
  *out = NULL;
  /* An unlocked peek keeps the fast path to one lock; a miss is harmless. */
  if (__atomic_load_n(&p->deferred, __ATOMIC_RELAXED)) drain_deferred(p);
  pthread_mutex_lock(&p->mu);
  /* The deadline is computed only when this checkout has to wait: the
   * fast path reads the clock once (for recycling and the holder's age). */
  double start = 0;
  struct timespec deadline = {0, 0};
  bool have_deadline = false;
  for (;;) {
    if (p->closed) {
      pthread_mutex_unlock(&p->mu);
      snprintf(err, errlen, "the connection pool is closed");
      return CARACAL_ECLOSED;
    }
    caracal_Conn *c = NULL;
    bool fresh = false;
    if (p->nidle > 0) {
      c = p->idle[--p->nidle];
      p->checked_out++;
    } else if (may_open(p)) {
      p->connecting++;
      fresh = true;
    }
    if (c || fresh) {
      double now = pool_now(p);
      bool replace = c && conn_expired(p, c, now);
      if (c && !replace && !p->pre_ping) {
        /* The fast path: an idle connection that needs nothing, handed out
         * under the one lock, with no system call. */
        c->in_use = true;
        c->invalid = false;
        c->checked_out_at = now;
        snprintf(c->holder, sizeof c->holder, "%s", holder ? holder : "");
        inuse_link(p, c);
        pthread_mutex_unlock(&p->mu);
        *out = c;
        return CARACAL_OK;
      }
      if (replace) {
        p->recycles++;
        p->checked_out--;
        p->connecting++;
      }
      pthread_mutex_unlock(&p->mu);

      if (replace) {
        conn_destroy(c);
        c = NULL;
        fresh = true;
      }
      if (c && p->pre_ping && !conn_run(c->pg, "")) {
        /* Dead while idle: replace it, and everything as old as it. */
        pool_log(p, CARACAL_LOG_INFO, "pre-ping found a dead connection; replacing it");
        conn_destroy(c);
        c = NULL;
        fresh = true;
        pthread_mutex_lock(&p->mu);
        p->checked_out--;
        p->connecting++;
        p->discards++;
        p->invalidated_at = now;
        pthread_mutex_unlock(&p->mu);
      }
      if (fresh) {
        c = conn_open(p, err, errlen);
        pthread_mutex_lock(&p->mu);
        p->connecting--;
        if (!c) {
          pthread_cond_signal(&p->cv); /* the slot is free again */
          pthread_mutex_unlock(&p->mu);
          pool_log(p, CARACAL_LOG_WARN, "%s", err);
          return CARACAL_ECONNECT;
        }
        p->connects++;
        p->checked_out++;
        conn_stamp(p, c, pool_now(p));
      } else {
        pthread_mutex_lock(&p->mu);
      }
      c->in_use = true;
      c->invalid = false;
      c->checked_out_at = pool_now(p);
      snprintf(c->holder, sizeof c->holder, "%s", holder ? holder : "");
      inuse_link(p, c);
      pthread_mutex_unlock(&p->mu);
      *out = c;
      return CARACAL_OK;
    }
    if (!wait) {
      if (waited >= p->timeout) return checkout_timeout(p, waited, err, errlen);
      pthread_mutex_unlock(&p->mu);
      snprintf(err, errlen, "no connection is free yet");
      return CARACAL_EAGAIN;
    }
    if (!have_deadline) {
      start = now_monotonic();
      clock_gettime(CLOCK_MONOTONIC, &deadline);
      double secs = p->timeout;
      deadline.tv_sec += (time_t)secs;
      deadline.tv_nsec += (long)((secs - (double)(time_t)secs) * 1e9);
      if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
      }
      have_deadline = true;
    }
    p->waiting++;
    int rc = pthread_cond_timedwait(&p->cv, &p->mu, &deadline);
    p->waiting--;
    if (rc == ETIMEDOUT && p->nidle == 0 && !may_open(p) && !p->closed)
      return checkout_timeout(p, now_monotonic() - start, err, errlen);
  }
}

int caracal_pool_checkout(caracal_Pool *p, const char *holder, caracal_Conn **out, char *err,
                          size_t errlen) {
  return checkout(p, holder, true, 0, out, err, errlen);
}

int caracal_pool_try_checkout(caracal_Pool *p, const char *holder, double waited,
                              caracal_Conn **out, char *err, size_t errlen) {
  return checkout(p, holder, false, waited, out, err, errlen);
}

int caracal_pool_prewarm(caracal_Pool *p, int n, char *err, size_t errlen) {
  int opened = 0;
  if (__atomic_load_n(&p->deferred, __ATOMIC_RELAXED)) drain_deferred(p);
  pthread_mutex_lock(&p->mu);
  if (n > p->size) n = p->size; /* the idle stack holds pool_size */
  while (!p->closed && total_count(p) < n) {
    p->connecting++;
    pthread_mutex_unlock(&p->mu);
    caracal_Conn *c = conn_open(p, err, errlen);
    pthread_mutex_lock(&p->mu);
    p->connecting--;
    if (!c) {
      pthread_cond_signal(&p->cv);
      pthread_mutex_unlock(&p->mu);
      pool_log(p, CARACAL_LOG_WARN, "%s", err);
      return CARACAL_ECONNECT;
    }
    p->connects++;
    if (p->closed) { /* closed while connecting: not ours to keep */
      pthread_mutex_unlock(&p->mu);
      conn_destroy(c);
      pthread_mutex_lock(&p->mu);
      break;
    }
    conn_stamp(p, c, pool_now(p));
    p->idle[p->nidle++] = c;
    pthread_cond_signal(&p->cv); /* a waiter may take it */
    opened++;
  }
  bool closed = p->closed;
  pthread_mutex_unlock(&p->mu);
  if (closed) {
    snprintf(err, errlen, "the connection pool is closed");
    return CARACAL_ECLOSED;
  }
  return opened;
}

/* The second half of a checkin, under the lock: the connection leaves
 * the in-use list and goes back on the idle stack, or is closed. Returns
 * the connection to close (outside the lock), or NULL. */
static caracal_Conn *finish_checkin(caracal_Pool *p, caracal_Conn *c, bool dead, bool keep) {
  c->in_use = false;
  c->holder[0] = '\0';
  inuse_unlink(p, c);
  p->checked_out--;
  double now = pool_now(p);
  if (dead && PQstatus(c->pg) != CONNECTION_OK) {
    /* The server went away: the idle ones most likely went with it. */
    p->invalidated_at = now;
  }
  if (keep && !p->closed && p->nidle < p->size && !conn_expired(p, c, now)) {
    p->idle[p->nidle++] = c;
    c = NULL;
  } else {
    p->discards++;
  }
  if (p->waiting) pthread_cond_signal(&p->cv);
  return c;
}

void caracal_pool_checkin(caracal_Conn *c) {
  if (!c) return;
  caracal_Pool *p = c->pool;
  pthread_mutex_lock(&p->mu);
  if (!c->in_use || c->parked) {
    pthread_mutex_unlock(&p->mu);
    pool_log(p, CARACAL_LOG_WARN, "connection returned twice; ignoring the second return");
    return;
  }
  if (!conn_needs_reset(p, c) && c->nnotices == 0) {
    /* The fast path: nothing to reset, one lock, no system call. */
    c = finish_checkin(p, c, false, true);
    pthread_mutex_unlock(&p->mu);
    conn_destroy(c); /* NULL when kept */
    return;
  }
  pthread_mutex_unlock(&p->mu);

  /* Resetting takes round trips: never under the lock. */
  bool dead = c->invalid || PQstatus(c->pg) != CONNECTION_OK;
  bool keep = !dead && conn_reset(p, c);
  pool_clear_notices(c);

  pthread_mutex_lock(&p->mu);
  c = finish_checkin(p, c, dead, keep);
  pthread_mutex_unlock(&p->mu);
  conn_destroy(c); /* NULL when kept */
}

void caracal_pool_checkin_deferred(caracal_Conn *c) {
  if (!c) return;
  caracal_Pool *p = c->pool;
  if (!conn_needs_reset(p, c)) {
    caracal_pool_checkin(c);
    return;
  }
  /* It stays checked out (and in the in-use list) until the next checkout
   * or close resets it through the ordinary checkin. */
  pthread_mutex_lock(&p->mu);
  if (c->in_use && !c->parked) {
    c->parked = true;
    snprintf(c->holder, sizeof c->holder, "(returned, awaiting reset)");
    c->next_parked = p->deferred;
    __atomic_store_n(&p->deferred, c, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock(&p->mu);
}

void caracal_pool_status(caracal_Pool *p, caracal_PoolStatus *st) {
  pthread_mutex_lock(&p->mu);
  memset(st, 0, sizeof *st);
  st->size = p->size;
  st->checked_in = p->nidle;
  st->checked_out = p->checked_out;
  st->connecting = p->connecting;
  st->total = total_count(p);
  st->overflow = st->total > p->size ? st->total - p->size : 0;
  st->max_overflow = p->max_overflow;
  st->waiting = p->waiting;
  st->connects = p->connects;
  st->discards = p->discards;
  st->timeouts = p->timeouts;
  st->recycles = p->recycles;
  pthread_mutex_unlock(&p->mu);
}

int caracal_pool_health_check(caracal_Pool *p) {
  caracal_Conn *c;
  char err[256];
  if (caracal_pool_checkout(p, "health_check", &c, err, sizeof err) != CARACAL_OK) return 0;
  PGresult *r = PQexec(c->pg, "SELECT 1");
  int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
  PQclear(r);
  if (!ok) caracal_conn_invalidate(c);
  caracal_pool_checkin(c);
  return ok;
}

void caracal_pool_close(caracal_Pool *p) {
  drain_deferred(p);
  pthread_mutex_lock(&p->mu);
  p->closed = true;
  caracal_Conn **idle = p->idle;
  int n = p->nidle;
  caracal_Conn *tmp[64];
  caracal_Conn **victims = n <= 64 ? tmp : malloc((size_t)n * sizeof *victims);
  if (victims) memcpy(victims, idle, (size_t)n * sizeof *victims);
  else n = 0; /* out of memory: they are freed at the last release */
  p->nidle -= n;
  p->discards += (uint64_t)n;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < n; i++) conn_destroy(victims[i]);
  if (victims != tmp) free(victims);
}

void caracal_pool_release(caracal_Pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  int left = --p->refs;
  pthread_mutex_unlock(&p->mu);
  if (left > 0) return;
  caracal_pool_close(p);
  /* Connections still checked out belong to their borrowers; the last
   * reference going away means none can come back, so free them too. */
  caracal_Conn *c = p->in_use;
  while (c) {
    caracal_Conn *next = c->next;
    conn_destroy(c);
    c = next;
  }
  for (int i = 0; i < p->nidle; i++) conn_destroy(p->idle[i]);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  free_strv(p->keywords);
  free_strv(p->values);
  free(p->idle);
  free(p);
}

void caracal_pool_invalidate_all(caracal_Pool *p) {
  pthread_mutex_lock(&p->mu);
  p->invalidated_at = pool_now(p);
  pthread_mutex_unlock(&p->mu);
}

PGconn *caracal_conn_pg(caracal_Conn *c) { return c->pg; }
void caracal_conn_invalidate(caracal_Conn *c) { c->invalid = true; }
void caracal_conn_mark_dirty(caracal_Conn *c) { c->dirty = true; }
