/*
 * fuzz_url.c: libFuzzer target for url_parse and caracal_redact.
 *
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -I/usr/include/lua5.4 -I/usr/include/postgresql -Isrc \
 *     -o build/fuzz_url spec/fuzz/fuzz_url.c src/url.c -lpq
 *   build/fuzz_url -max_len=512
 *
 * Besides memory errors (the sanitizers) it aborts when a promise about
 * secrets is broken:
 *   - url_parse: on error nothing is returned and the message is a
 *     terminated string that never holds a long URL whole; for a URL built
 *     with a known password (fully percent-encoded, and no other '@' so the
 *     userinfo is unambiguous) the message never contains that password;
 *   - caracal_redact: the output never contains the password (unless the
 *     password has a '*', which "***" itself could spell), is always
 *     terminated, and a smaller buffer gives a prefix of the full output.
 *
 * Input layout: byte 0 picks a small output size for the truncation
 * check; the rest is split at the first '\n' into A (a URL or message)
 * and B (a password).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "fuzz_url: check failed: %s (line %d)\n", #cond, __LINE__); \
      abort();                                                        \
    }                                                                 \
  } while (0)

/* Redact msg with pw into a buffer sized as core.redact sizes it, and
 * into a small one; check the promises above. Returns the full output
 * (malloc'ed) or NULL when out of memory. */
static char *redact_checked(const char *msg, const char *pw, size_t small) {
  size_t len = strlen(msg);
  size_t cap = len * 3 + 16;
  char *out = malloc(cap);
  if (!out) return NULL;
  size_t n = caracal_redact(msg, pw, out, cap);
  CHECK(n < cap && out[n] == '\0' && strlen(out) == n);
  if (pw && *pw && !strchr(pw, '*')) CHECK(strstr(out, pw) == NULL);

  /* Exactly `small` bytes on the heap so ASan sees any write past them. */
  char *tiny = malloc(small ? small : 1);
  if (tiny) {
    size_t m = caracal_redact(msg, pw, tiny, small);
    if (small == 0) {
      CHECK(m == 0);
    } else {
      CHECK(m == (n < small - 1 ? n : small - 1));
      CHECK(tiny[m] == '\0' && memcmp(tiny, out, m) == 0);
    }
    free(tiny);
  }
  return out;
}

/* Does s have a byte that no fixed text of url.c's messages has? Only
 * then can "the message contains the password" be told apart from the
 * password happening to spell "port" or "URL". */
static int has_rare_byte(const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c >= 0x21 && c < 0x7f && !strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '():/@?=,.-", c))
      return 1;
  }
  return 0;
}

/* Parse url and check the promises; also redact the URL with every
 * password it yields. */
static void parse_checked(const char *url, size_t small) {
  UrlParam *params = (UrlParam *)&params; /* must be overwritten */
  int n = -1;
  char err[256];
  memset(err, 'x', sizeof err);
  if (url_parse(url, &params, &n, err, sizeof err) != 0) {
    CHECK(params == NULL && n == 0);
    CHECK(memchr(err, '\0', sizeof err) != NULL);
    if (strlen(url) > 64) CHECK(strstr(err, url) == NULL);
    return;
  }
  CHECK(n >= 0 && (n == 0 || params != NULL));
  for (int i = 0; i < n; i++) {
    CHECK(params[i].key && params[i].value);
    for (int j = 0; j < i; j++) CHECK(strcmp(params[i].key, params[j].key) != 0);
    if (strcmp(params[i].key, "password") == 0) free(redact_checked(url, params[i].value, small));
  }
  url_free(params, n);
}

/* Parse "postgresql://u:<pw fully encoded>@<rest>" where rest has no '@'
 * and check that an error message never shows pw. */
static void known_password_checked(const char *pw, const char *rest) {
  size_t pl = strlen(pw), rl = strlen(rest);
  char *url = malloc(sizeof "postgresql://u:@" + pl * 3 + rl);
  if (!url) return;
  char *w = url + sprintf(url, "postgresql://u:");
  for (size_t i = 0; i < pl; i++) w += sprintf(w, "%%%02X", (unsigned char)pw[i]);
  *w++ = '@';
  for (size_t i = 0; i < rl; i++) *w++ = rest[i] == '@' ? '_' : rest[i];
  *w = '\0';

  UrlParam *params;
  int n;
  char err[256];
  if (url_parse(url, &params, &n, err, sizeof err) == 0) {
    url_free(params, n);
  } else if (*pw && has_rare_byte(pw)) {
    CHECK(strstr(err, pw) == NULL);
  }
  free(url);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  size_t small = data[0] % 24;
  char *a = malloc(size);
  if (!a) return 0;
  /* A text ends at a NUL, as the C API's strings do. */
  memcpy(a, data + 1, size - 1);
  a[size - 1] = '\0';
  char *b = strchr(a, '\n');
  if (b) *b++ = '\0';
  else b = a + strlen(a);

  parse_checked(a, small);
  free(redact_checked(a, NULL, small));
  free(redact_checked(a, b, small));
  known_password_checked(b, a);
  free(a);
  return 0;
}
