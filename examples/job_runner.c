/*
 * job_runner.c: an automation host built on Caracal's C API.
 *
 * Each job is a Lua file returning function(session); the runner starts
 * every job as a task in its own transaction (session_scope: committed
 * when the job returns, rolled back when it raises), runs them side by
 * side on one small pool without threads, waiting on caracal_event_fd
 * between steps, then reports each job's outcome.
 *
 *   job_runner [--url URL] [--pool N] job.lua...
 *
 * URL defaults to $CARACAL_DATABASE_URL. Exit status: 0 when every job
 * succeeded, 1 when any failed, 2 on bad usage.
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

/* Runs one job in a transaction and records its outcome; errors are
 * caught here, so a failed job is a result, not a crash. */
static const char *prelude =
  "local db = require 'caracal.db'\n"
  "local manager = db.initialize_connection_manager()\n"
  "job_results = {}\n"
  "function run_job(name, job)\n"
  "  local ok, res = pcall(manager.session_scope, manager, job)\n"
  "  job_results[#job_results + 1] = { name = name, ok = ok, text = tostring(res) }\n"
  "end\n";

static void on_log(void *ud, int level, const char *msg) {
  (void)ud;
  if (level >= CARACAL_LOG_WARN) fprintf(stderr, "job_runner: %s\n", msg);
}

static void on_error(void *ud, const char *msg) {
  int *errors = ud;
  (*errors)++;
  fprintf(stderr, "job_runner: %s\n", msg);
}

static caracal_Pool *pool_from_url(const char *url, int size) {
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(url, &perr);
  if (!opts) {
    fprintf(stderr, "job_runner: bad URL: %s", perr ? perr : "out of memory\n");
    PQfreemem(perr);
    return NULL;
  }
  const char *kw[64], *vals[64];
  int n = 0;
  for (PQconninfoOption *o = opts; o->keyword && n < 62; o++) {
    if (!o->val) continue;
    kw[n] = o->keyword;
    vals[n++] = o->val;
  }
  kw[n] = vals[n] = NULL;
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = size;
  cfg.max_overflow = 0;
  cfg.log = on_log;
  caracal_Pool *pool = NULL;
  char err[512];
  if (caracal_pool_new(&cfg, &pool, err, sizeof err) != CARACAL_OK ||
      caracal_pool_prewarm(pool, size, err, sizeof err) < 0) {
    fprintf(stderr, "job_runner: %s\n", err);
    caracal_pool_release(pool);
    pool = NULL;
  }
  PQconninfoFree(opts);
  return pool;
}

/* "examples/jobs/db_health.lua" -> "db_health" on the stack. */
static void push_job_name(lua_State *L, const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t len = strlen(base);
  if (len > 4 && strcmp(base + len - 4, ".lua") == 0) len -= 4;
  lua_pushlstring(L, base, len);
}

int main(int argc, char **argv) {
  const char *url = getenv("CARACAL_DATABASE_URL");
  int pool_size = 3, first = 1;
  while (first < argc && strncmp(argv[first], "--", 2) == 0) {
    if (first + 1 >= argc) goto usage;
    if (strcmp(argv[first], "--url") == 0) url = argv[first + 1];
    else if (strcmp(argv[first], "--pool") == 0) pool_size = atoi(argv[first + 1]);
    else goto usage;
    first += 2;
  }
  if (!url || first >= argc || pool_size < 1) goto usage;

  caracal_Pool *pool = pool_from_url(url, pool_size);
  if (!pool) return 1;
  int task_errors = 0, failed = 0, total = 0, started = 0;
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  caracal_Options opts;
  memset(&opts, 0, sizeof opts);
  opts.lua_dir = getenv("CARACAL_LUA_DIR");
  opts.pool = pool;
  opts.nonblocking = 1;
  opts.log = on_log;
  opts.on_error = on_error;
  opts.error_ud = &task_errors;
  if (caracal_openlibs(L, &opts) != 0 || luaL_dostring(L, prelude) != LUA_OK) {
    fprintf(stderr, "job_runner: %s\n", lua_tostring(L, -1));
    failed = 1;
    goto done;
  }

  /* Start every job; each runs until its first wait. */
  for (int i = first; i < argc; i++) {
    total++;
    if (luaL_loadfile(L, argv[i]) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK ||
        !lua_isfunction(L, -1)) {
      printf("FAIL %s: %s\n", argv[i],
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "the file does not return a function");
      failed++;
      lua_settop(L, 0);
      continue;
    }
    lua_getglobal(L, "run_job");
    push_job_name(L, argv[i]);
    lua_pushvalue(L, -3);               /* job run_job name job */
    caracal_spawn(L, 2);
    started++;
    lua_settop(L, 0);
  }

  /* The event loop: sleep until a socket has something or a timer is due. */
  int fd = caracal_event_fd(L);
  while (caracal_poll(L, -1) > 0) {
    double wait = caracal_poll_timeout(L);
    struct pollfd pfd = {fd, POLLIN, 0};
    poll(&pfd, fd >= 0 ? 1 : 0, wait < 0 ? 1000 : (int)(wait * 1000) + 1);
  }

  lua_getglobal(L, "job_results");
  int n = (int)lua_rawlen(L, -1);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_getfield(L, -1, "name");
    lua_getfield(L, -2, "ok");
    lua_getfield(L, -3, "text");
    bool ok = lua_toboolean(L, -2);
    printf("%s %s: %s\n", ok ? "ok  " : "FAIL", lua_tostring(L, -3), lua_tostring(L, -1));
    if (!ok) failed++;
    lua_pop(L, 4);
  }
  lua_pop(L, 1);
  if (n < started) failed += started - n; /* died outside its pcall (task_errors says why) */
  printf("job_runner: %d job%s, %d failed\n", total, total == 1 ? "" : "s", failed);

done:
  caracal_close(L);
  lua_close(L);
  caracal_pool_release(pool);
  return failed ? 1 : 0;

usage:
  fprintf(stderr, "usage: %s [--url URL] [--pool N] job.lua...\n"
                  "       (URL defaults to $CARACAL_DATABASE_URL)\n", argv[0]);
  return 2;
}
