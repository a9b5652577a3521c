/*
 * uuid.c: UUIDs as plain Lua strings in one canonical form, 36 lowercase
 * characters with hyphens (what PostgreSQL prints), so two spellings of
 * the same UUID compare equal once normalised.
 */
#include <string.h>

#include <uuid/uuid.h>

#include "internal.h"

#define UUID_SHOW_MAX 64 /* bytes of a bad value quoted in messages */

static const char hexdigits[] = "0123456789abcdef";

/* Value of a hex digit, or -1. */
static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/*
 * Accepted: 32 hex digits either plain or grouped 8-4-4-4-12 by hyphens,
 * in any case, optionally inside {braces} and/or after "urn:uuid:" (any
 * case). Anything else, including spaces, is refused.
 */
int uuid_normalize(const char *s, size_t len, char out[37]) {
  static const char urn[] = "urn:uuid:";
  unsigned char raw[16];
  if (len >= sizeof urn - 1) {
    size_t i = 0;
    while (i < sizeof urn - 1 && (s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]) == urn[i]) i++;
    if (i == sizeof urn - 1) {
      s += i;
      len -= i;
    }
  }
  if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
    s++;
    len -= 2;
  }
  int hyphens = len == 36;
  if (!hyphens && len != 32) return -1;
  for (size_t i = 0, n = 0; i < len; i++) {
    if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23)) {
      if (s[i] != '-') return -1;
      continue;
    }
    int v = hexval(s[i]);
    if (v < 0) return -1;
    if (n % 2 == 0) raw[n / 2] = (unsigned char)(v << 4);
    else raw[n / 2] |= (unsigned char)v;
    n++;
  }
  uuid_format(raw, out);
  return 0;
}

void uuid_format(const unsigned char raw[16], char out[37]) {
  char *p = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
    *p++ = hexdigits[raw[i] >> 4];
    *p++ = hexdigits[raw[i] & 0x0f];
  }
  *p = '\0';
}

/* uuid4() -> a random (version 4) UUID. */
static int l_uuid4(lua_State *L) {
  uuid_t raw;
  char out[37];
  uuid_generate_random(raw);
  uuid_format(raw, out);
  lua_pushlstring(L, out, 36);
  return 1;
}

/* uuid(s) -> s normalised; raises "invalid UUID: 's'" naming the value. */
static int l_uuid(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  char out[37];
  if (uuid_normalize(s, len, out) != 0) {
    lua_pushlstring(L, s, len > UUID_SHOW_MAX ? UUID_SHOW_MAX : len);
    return luaL_error(L, "invalid UUID: '%s%s'", lua_tostring(L, -1),
                      len > UUID_SHOW_MAX ? "..." : "");
  }
  lua_pushlstring(L, out, 36);
  return 1;
}

/* is_uuid(v) -> true when v is a string in an accepted form. */
static int l_is_uuid(lua_State *L) {
  size_t len = 0;
  char out[37];
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
  lua_pushboolean(L, s != NULL && uuid_normalize(s, len, out) == 0);
  return 1;
}

static const luaL_Reg uuid_funcs[] = {
  {"uuid4", l_uuid4},
  {"uuid", l_uuid},
  {"is_uuid", l_is_uuid},
  {NULL, NULL}
};

void uuid_open(lua_State *L) {
  luaL_setfuncs(L, uuid_funcs, 0);
}
