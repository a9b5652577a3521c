/*
 * tap.h: a tiny TAP producer for the C tests. spec/run.sh counts the
 * "ok" and "not ok" lines of every suite into the final summary.
 *
 *   TEST("pool hands out a live connection") { ... CHECK(cond, "why"); }
 *   int main(void) { RUN(name); ...; return tap_done(); }
 */
#ifndef CARACAL_TAP_H
#define CARACAL_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_count, tap_failed, tap_current_failed;

/* Record a failed expectation inside the running test (it goes on). */
static void tap_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stdout, "# %s:%d: ", file, line);
  vfprintf(stdout, fmt, ap);
  fputc('\n', stdout);
  va_end(ap);
  tap_current_failed = 1;
}

#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) tap_fail(__FILE__, __LINE__, "check failed: " #cond " -- " __VA_ARGS__); \
  } while (0)

#define TEST(fn) static void fn(void)

#define RUN(fn, desc)                                               \
  do {                                                              \
    tap_current_failed = 0;                                         \
    fn();                                                           \
    tap_count++;                                                    \
    if (tap_current_failed) tap_failed++;                           \
    printf("%sok %d - %s\n", tap_current_failed ? "not " : "", tap_count, desc); \
    fflush(stdout);                                                 \
  } while (0)

static int tap_done(void) {
  printf("1..%d\n", tap_count);
  return tap_failed ? 1 : 0;
}

#endif
