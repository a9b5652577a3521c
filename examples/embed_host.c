/*
 * embed_host.c: a "game loop" host that embeds Caracal.
 *
 * It runs at a fixed tick rate. Each tick it calls the Lua systems
 * (examples/embed_systems.lua), which start tasks writing spending events
 * and reading the total back, then gives Caracal a slice of the tick with
 * caracal_poll. Between ticks it sleeps on caracal_event_fd, so results
 * are picked up as soon as they arrive. No tick ever waits for the
 * database: queries yield their task instead. At exit it prints the worst
 * tick time and checks that every write landed.
 *
 *   embed_host [--url URL] [--ticks N] [--hz HZ] [--systems FILE]
 *              [--max-tick-ms MS]
 *
 * URL defaults to $CARACAL_DATABASE_URL. Exit status 0 when every event
 * was written, the slow report ran across several ticks, no task failed
 * and the worst tick stayed under --max-tick-ms (default 100, generous on
 * purpose: this is a demonstration, not a benchmark).
 */
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "caracal.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int task_errors;

static void on_error(void *ud, const char *msg) {
  (void)ud;
  task_errors++;
  fprintf(stderr, "embed_host: task failed: %s\n", msg);
}

static void on_log(void *ud, int level, const char *msg) {
  (void)ud;
  if (level >= CARACAL_LOG_WARN) fprintf(stderr, "embed_host: %s\n", msg);
}

/* A pool from a postgresql:// URL: libpq parses it into keywords. */
static caracal_Pool *pool_from_url(const char *url, int size) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(url, &perr);
  if (!opts) {
    fprintf(stderr, "embed_host: bad URL: %s", perr ? perr : "out of memory\n");
    PQfreemem(perr);
    return NULL;
  }
  const char *kw[64], *vals[64];
  int n = 0;
  bool named = false;
  for (PQconninfoOption *o = opts; o->keyword && n < 62; o++) {
    if (!o->val) continue;
    kw[n] = o->keyword;
    vals[n++] = o->val;
    if (strcmp(o->keyword, "application_name") == 0) named = true;
  }
  if (!named) {
    kw[n] = "application_name";
    vals[n++] = "caracal-embed-host";
  }
  kw[n] = vals[n] = NULL;
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = size;
  cfg.max_overflow = 0; /* never connect inside a tick */
  cfg.pool_timeout = 10;
  cfg.log = on_log;
  caracal_Pool *pool = NULL;
  char err[512];
  if (caracal_pool_new(&cfg, &pool, err, sizeof err) != CARACAL_OK)
    fprintf(stderr, "embed_host: %s\n", err);
  PQconninfoFree(opts); /* the pool copied what it keeps */
  /* libpq connects synchronously: open every connection before the game
   * starts, so no tick pays for a connect. */
  if (pool && caracal_pool_prewarm(pool, size, err, sizeof err) < 0) {
    fprintf(stderr, "embed_host: %s\n", err);
    caracal_pool_release(pool);
    pool = NULL;
  }
  return pool;
}

/* Call systems[name](...) on the main thread (update) or as a task
 * (setup, finish). The systems table is at index 1. */
static bool call_system(lua_State *L, const char *name, int tick, bool as_task) {
  lua_getfield(L, 1, name);
  int nargs = 0;
  if (tick > 0) {
    lua_pushinteger(L, tick);
    nargs = 1;
  }
  if (as_task) return caracal_spawn(L, nargs) >= 0;
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
    fprintf(stderr, "embed_host: %s failed: %s\n", name, luaL_tolstring(L, -1, NULL));
    lua_settop(L, 1);
    return false;
  }
  return true;
}

/* Poll until no task waits (setup, drain, finish), sleeping on the event
 * fd; false when it takes longer than limit seconds. */
static bool settle(lua_State *L, int fd, double limit) {
  double end = now_s() + limit;
  while (caracal_poll(L, -1) > 0) {
    if (now_s() > end) return false;
    double wait = caracal_poll_timeout(L);
    struct pollfd pfd = {fd, POLLIN, 0};
    poll(&pfd, 1, wait < 0 ? 100 : (int)(wait * 1000) + 1);
  }
  return true;
}

int main(int argc, char **argv) {
  const char *url = getenv("CARACAL_DATABASE_URL");
  const char *systems = "examples/embed_systems.lua";
  int ticks = 150, hz = 60;
  double max_tick_ms = 100;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) goto usage;
    if (strcmp(a, "--url") == 0) url = v;
    else if (strcmp(a, "--ticks") == 0) ticks = atoi(v);
    else if (strcmp(a, "--hz") == 0) hz = atoi(v);
    else if (strcmp(a, "--systems") == 0) systems = v;
    else if (strcmp(a, "--max-tick-ms") == 0) max_tick_ms = atof(v);
    else goto usage;
    i++;
  }
  if (!url || ticks < 1 || hz < 1) goto usage;

  caracal_Pool *pool = pool_from_url(url, 4);
  if (!pool) return 1;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  caracal_Options opts;
  memset(&opts, 0, sizeof opts);
  opts.lua_dir = getenv("CARACAL_LUA_DIR");
  opts.pool = pool;
  opts.nonblocking = 1;
  opts.log = on_log;
  opts.on_error = on_error;
  int status = 1;
  if (caracal_openlibs(L, &opts) != 0) {
    fprintf(stderr, "embed_host: %s\n", lua_tostring(L, -1));
    goto done;
  }
  if (luaL_dofile(L, systems) != LUA_OK || !lua_istable(L, -1)) {
    fprintf(stderr, "embed_host: %s: %s\n", systems, lua_tostring(L, -1));
    goto done;
  }
  lua_settop(L, 1); /* systems */
  int fd = caracal_event_fd(L);
  if (fd < 0) {
    perror("embed_host: caracal_event_fd");
    goto done;
  }

  if (!call_system(L, "setup", 0, true) || !settle(L, fd, 30) || task_errors) {
    fprintf(stderr, "embed_host: setup failed\n");
    goto done;
  }

  /* The game loop. A tick is the systems' update plus a slice of at most
   * 2 ms for Caracal; the rest of the period is spent waiting on the
   * event fd, polling whenever a result comes in. */
  const double period = 1.0 / hz;
  double worst = 0, total = 0;
  int pending_ticks = 0;
  double next = now_s();
  for (int tick = 1; tick <= ticks; tick++) {
    double t0 = now_s();
    call_system(L, "update", tick, false);
    if (caracal_poll(L, 0.002) > 0) pending_ticks++;
    double work = now_s() - t0;
    total += work;
    if (work > worst) worst = work;
    next += period;
    for (double left; (left = next - now_s()) > 0;) {
      struct pollfd pfd = {fd, POLLIN, 0};
      if (poll(&pfd, 1, (int)(left * 1000)) > 0) {
        double p0 = now_s();
        caracal_poll(L, 0.002);
        double slice = now_s() - p0;
        if (slice > worst) worst = slice;
      }
    }
  }
  bool drained = settle(L, fd, 30);

  /* The report, read back from the database by a last task. */
  lua_getfield(L, 1, "finish");
  lua_setglobal(L, "embed_finish");
  bool reported = luaL_dostring(L, "local f = embed_finish\n"
                                   "require('caracal.core').spawn(function() embed_report = f() end)") ==
                  LUA_OK;
  reported = reported && settle(L, fd, 30);
  lua_settop(L, 1);
  lua_getglobal(L, "embed_report");
  if (!reported || !lua_istable(L, -1)) {
    fprintf(stderr, "embed_host: no report\n");
    goto done;
  }
  lua_getfield(L, -1, "expected");
  lua_getfield(L, -2, "written");
  lua_getfield(L, -3, "spent");
  lua_getfield(L, -4, "reads");
  lua_getfield(L, -5, "slow_report_ticks");
  lua_Integer expected = lua_tointeger(L, -5), written = lua_tointeger(L, -4);
  lua_Integer reads = lua_tointeger(L, -2), slow_ticks = lua_tointeger(L, -1);
  const char *spent = lua_tostring(L, -3);

  printf("embed_host: %d ticks at %d Hz; worst tick %.3f ms, mean %.3f ms (bound %.0f ms)\n",
         ticks, hz, worst * 1e3, total / ticks * 1e3, max_tick_ms);
  printf("embed_host: %lld/%lld events written, spent %s, %lld spending reads\n",
         (long long)written, (long long)expected, spent ? spent : "?", (long long)reads);
  printf("embed_host: the 0.3 s report ran across %lld ticks; %d ticks ended with queries pending\n",
         (long long)slow_ticks, pending_ticks);
  bool ok = drained && task_errors == 0 && expected > 0 && written == expected && reads > 0 &&
            slow_ticks >= 2 && worst * 1e3 < max_tick_ms;
  printf("embed_host: %s\n", ok ? "ok" : "FAILED");
  status = ok ? 0 : 1;

done:
  caracal_close(L);
  lua_close(L);
  caracal_pool_release(pool);
  return status;

usage:
  fprintf(stderr, "usage: %s [--url URL] [--ticks N] [--hz HZ] [--systems FILE] [--max-tick-ms MS]\n"
                  "       (URL defaults to $CARACAL_DATABASE_URL)\n", argv[0]);
  return 2;
}
