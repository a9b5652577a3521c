/*
 * fuzz_json.c: libFuzzer target for Caracal's JSON codec (json.c).
 *
 *   make fuzz-build && build/fuzz/fuzz_json -max_len=4096
 *
 * Promises checked: decoding arbitrary bytes either succeeds or raises a
 * Lua error with a message (never a crash, however deep or long); what is
 * decoded encodes, and the text is stable once written by the encoder:
 * t1 = encode(decode(input)), t2 = encode(decode(t1)), t3 =
 * encode(decode(t2)) gives t2 == t3, and t1 == t2 except that the sign of
 * a zero may go (-0.0 is written "-0", which reads back as the integer 0;
 * PostgreSQL's jsonb has no negative zero either). So empty arrays stay
 * arrays and numbers keep every digit.
 */
#include "fuzz_common.h"

static int decode(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  json_push_decoded(L, s, len);
  return 1;
}

static int encode(lua_State *L) {
  json_push_encoded(L, 1, NULL);
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = fuzz_state();
  int top = lua_gettop(L);
  lua_pushcfunction(L, decode);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING);
    lua_settop(L, top);
    return 0;
  }
  /* v -> text1 -> v' -> text2: text1 == text2 */
  lua_pushcfunction(L, encode);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    /* Only a number JSON allows but a Lua double cannot hold may fail. */
    const char *msg = lua_tostring(L, -1);
    FUZZ_CHECK(msg != NULL);
    lua_settop(L, top);
    return 0;
  }
  /* text -> decode -> encode, on the text on top; replaces it. */
#define ROUND()                                      \
  do {                                               \
    lua_pushcfunction(L, decode);                    \
    lua_insert(L, -2);                               \
    FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);     \
    lua_pushcfunction(L, encode);                    \
    lua_insert(L, -2);                               \
    FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);     \
  } while (0)
  size_t n1, n2, n3;
  const char *t1 = lua_tolstring(L, -1, &n1);
  lua_pushvalue(L, -1);
  ROUND();
  const char *t2 = lua_tolstring(L, -1, &n2);
  lua_pushvalue(L, -1);
  ROUND();
  const char *t3 = lua_tolstring(L, -1, &n3);
  if (n2 != n3 || memcmp(t2, t3, n2) != 0) {
    fprintf(stderr, "fuzz_json: not stable:\n  %.*s\n  %.*s\n", (int)n2, t2, (int)n3, t3);
    abort();
  }
  if (n1 != n2 || memcmp(t1, t2, n1) != 0) {
    /* Allowed difference: "-0" (a negative zero) read back as 0. */
    size_t i = 0, j = 0;
    while (i < n1 && j < n2) {
      if (t1[i] == t2[j]) { i++; j++; continue; }
      if (t1[i] == '-' && t2[j] == '0' && i + 1 < n1 && t1[i + 1] == '0' &&
          (i + 2 == n1 || strchr(",]}", t1[i + 2]))) { i++; continue; }
      break;
    }
    if (i != n1 || j != n2) {
      fprintf(stderr, "fuzz_json: the encoder's text changed:\n  %.*s\n  %.*s\n", (int)n1, t1, (int)n2, t2);
      abort();
    }
  }
  lua_settop(L, top);
  return 0;
}
