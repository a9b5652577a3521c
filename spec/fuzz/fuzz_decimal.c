/*
 * fuzz_decimal.c: libFuzzer target for the decimal parser (dec_push_string)
 * and the arithmetic on what it accepts.
 *
 *   make fuzz-build && build/fuzz/fuzz_decimal -max_len=256
 *
 * Besides memory errors and undefined behaviour (the sanitizers), it
 * aborts when a promise is broken: text the parser accepts prints as text
 * that parses back to an equal Decimal printing the same (tostring
 * round-trips); d - d is zero; d + 0 == d; -(-d) == d; d * 1 == d; a
 * rejected text raises a Lua error (never a crash).
 */
#include "fuzz_common.h"

static int parse(lua_State *L) {
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  dec_push_string(L, s, len);
  return 1;
}

static const char CHECKS[] =
  "local parse = ...\n"
  "return function(d)\n"
  "  local D = core.Decimal\n"
  "  local t = tostring(d)\n"
  "  local back = parse(t)\n"
  "  assert(back == d, 'round trip changed the value: ' .. t)\n"
  "  assert(tostring(back) == t, 'round trip changed the text: ' .. t .. ' -> ' .. tostring(back))\n"
  "  local zero = D('0')\n"
  "  assert(d - d == zero, 'd - d ~= 0 for ' .. t)\n"
  "  assert(d + zero == d, 'd + 0 ~= d for ' .. t)\n"
  "  assert(-(-d) == d, '-(-d) ~= d for ' .. t)\n"
  "  assert(d * D('1') == d, 'd * 1 ~= d for ' .. t)\n"
  "  assert(not (d < d) and d <= d, 'order is not reflexive for ' .. t)\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int checks_ref = LUA_NOREF;
  lua_State *L = fuzz_state();
  if (checks_ref == LUA_NOREF) {
    luaL_loadstring(L, CHECKS);
    lua_pushcfunction(L, parse);
    FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);
    checks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  int top = lua_gettop(L);
  lua_pushcfunction(L, parse);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    /* Rejected: the error is a message naming the value. */
    FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING);
    lua_settop(L, top);
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, checks_ref); /* d checks */
  lua_insert(L, -2);                             /* checks d */
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    /* Arithmetic may refuse a result out of NUMERIC's range; that is an
     * error, not a broken promise. */
    if (!msg || !strstr(msg, "out of range")) {
      fprintf(stderr, "fuzz_decimal: %s\n", msg ? msg : "(error object)");
      abort();
    }
  }
  lua_settop(L, top);
  return 0;
}
