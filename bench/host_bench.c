/*
 * host_bench.c: the benchmark's measurements that need C (bench/run.sh).
 *
 *   host_bench pool HOST PORT DBNAME USER ITERATIONS
 *       caracal_pool_checkout + caracal_pool_checkin of an idle connection
 *       in a loop (the fast path), after one warm-up; ns per pair.
 *   host_bench spawn NAME RUNS COMMAND [ARGS...]
 *       start COMMAND RUNS times (stdout and stderr to /dev/null), waiting
 *       for each; median and mean wall time. For `caracal -e ''`.
 *
 * Prints one JSON line like the other variants (rate per second, rss_kb).
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "caracal.h"

extern char **environ;

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

static int bench_pool(int argc, char **argv) {
  if (argc < 7) return 2;
  const char *kw[] = {"host", "port", "dbname", "user", "application_name", NULL};
  const char *vals[] = {argv[2], argv[3], argv[4], argv[5], "caracal-bench", NULL};
  long iterations = atol(argv[6]);
  caracal_PoolConfig cfg;
  caracal_pool_config_init(&cfg);
  cfg.keywords = kw;
  cfg.values = vals;
  cfg.pool_size = 1;
  cfg.max_overflow = 0;
  caracal_Pool *pool;
  char err[512];
  if (caracal_pool_new(&cfg, &pool, err, sizeof err) != CARACAL_OK ||
      caracal_pool_prewarm(pool, 1, err, sizeof err) < 0) {
    fprintf(stderr, "host_bench: %s\n", err);
    return 1;
  }
  caracal_Conn *c;
  if (caracal_pool_checkout(pool, "warm-up", &c, err, sizeof err) != CARACAL_OK) {
    fprintf(stderr, "host_bench: %s\n", err);
    return 1;
  }
  caracal_pool_checkin(c);
  double t = now_s();
  for (long i = 0; i < iterations; i++) {
    if (caracal_pool_checkout(pool, "bench", &c, err, sizeof err) != CARACAL_OK) {
      fprintf(stderr, "host_bench: %s\n", err);
      return 1;
    }
    caracal_pool_checkin(c);
  }
  double secs = now_s() - t;
  caracal_pool_release(pool);
  printf("{\"variant\":\"c_pool\",\"n\":%ld,\"seconds\":%.6f,\"rate\":%.1f,\"ns_per_op\":%.1f,\"rss_kb\":%ld}\n",
         iterations, secs, iterations / secs, secs * 1e9 / (double)iterations, peak_rss_kb());
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int bench_spawn(int argc, char **argv) {
  if (argc < 5) return 2;
  const char *name = argv[2];
  int runs = atoi(argv[3]);
  if (runs < 1) runs = 1;
  double *times = calloc((size_t)runs, sizeof *times);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  double total = 0;
  for (int r = 0; r < runs; r++) {
    pid_t pid;
    int status;
    double t = now_s();
    if (posix_spawnp(&pid, argv[4], &fa, NULL, argv + 4, environ) != 0) {
      perror("host_bench: spawn");
      return 1;
    }
    waitpid(pid, &status, 0);
    times[r] = now_s() - t;
    total += times[r];
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "host_bench: %s exited with status %d\n", argv[4], WEXITSTATUS(status));
      return 1;
    }
  }
  qsort(times, (size_t)runs, sizeof *times, cmp_double);
  double median = times[runs / 2];
  printf("{\"variant\":\"%s\",\"n\":%d,\"seconds\":%.6f,\"rate\":%.1f,\"median_ms\":%.3f,"
         "\"min_ms\":%.3f,\"mean_ms\":%.3f}\n",
         name, runs, total, 1.0 / median, median * 1e3, times[0] * 1e3, total / runs * 1e3);
  posix_spawn_file_actions_destroy(&fa);
  free(times);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "pool") == 0) return bench_pool(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "spawn") == 0) return bench_spawn(argc, argv);
  fprintf(stderr, "usage: host_bench pool HOST PORT DBNAME USER ITERATIONS\n"
                  "       host_bench spawn NAME RUNS COMMAND [ARGS...]\n");
  return 2;
}
