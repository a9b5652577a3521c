/*
 * fuzz_instant.c: libFuzzer target for the ISO 8601 parser (inst_parse).
 *
 *   make fuzz-build && build/fuzz/fuzz_instant -max_len=64
 *
 * Promises checked: an accepted text gives an instant within 0001..9999;
 * formatting it for PostgreSQL (inst_format_pg) and as ISO 8601
 * (tostring) gives texts that parse back to the same microsecond; a
 * rejected text never writes *out; nothing reads past len (ASan: the
 * input is copied to a buffer of exactly len bytes, not terminated).
 */
#include "fuzz_common.h"

#define SENTINEL INT64_C(0x5a5a5a5a5a5a5a5a)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = malloc(size ? size : 1);
  if (!s) return 0;
  memcpy(s, data, size);
  int64_t us = SENTINEL;
  if (inst_parse(s, size, &us) != 0) {
    FUZZ_CHECK(us == SENTINEL);
    free(s);
    return 0;
  }
  /* 0001-01-01 and 9999-12-31T23:59:59.999999Z in Unix microseconds. */
  FUZZ_CHECK(us >= INT64_C(-62135596800000000) && us <= INT64_C(253402300799999999));
  char buf[64];
  size_t n = inst_format_pg(us, buf, sizeof buf);
  FUZZ_CHECK(n > 0 && n < sizeof buf);
  int64_t back = SENTINEL;
  FUZZ_CHECK(inst_parse(buf, n, &back) == 0);
  FUZZ_CHECK(back == us);

  lua_State *L = fuzz_state();
  int top = lua_gettop(L);
  inst_push(L, us);
  size_t ilen;
  const char *iso = luaL_tolstring(L, -1, &ilen);
  back = SENTINEL;
  FUZZ_CHECK(inst_parse(iso, ilen, &back) == 0);
  FUZZ_CHECK(back == us);
  lua_settop(L, top);
  free(s);
  return 0;
}
