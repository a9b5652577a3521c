/*
 * json.c: JSON for JSONB columns, parameters and --json output.
 *
 * Why not lua-cjson: Debian 12 ships lua-cjson 2.1.0, which encodes every
 * number with "%.14g" (2^53+1 and int64 ids come out wrong), decodes every
 * number as a float, and has no marker for an empty array, so a scope `[]`
 * would come back as `{}`. A ledger cannot lose digits, so the codec is
 * ours:
 *   - integers that fit int64 stay Lua integers both ways; floats are
 *     written with the shortest "%.*g" that reads back bit-exact;
 *   - arrays decode with the metatable core.json_array_mt, and a table
 *     carrying it encodes as an array even when empty;
 *   - JSON null is core.null (a light userdata NULL, the same value as
 *     cjson.null), distinct from a missing value (nil, SQL NULL);
 *   - object keys are written sorted, so equal values encode equally;
 *   - strings must be valid UTF-8; NaN, infinity and nesting deeper than
 *     JSON_MAX_DEPTH are errors.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define JSON_MAX_DEPTH 500

static const char JSON_ARRAY_MT = 0; /* registry key of the array marker */
static const char JSON_BUF_MT = 0;   /* registry key of the encoder buffer's metatable */

static void push_array_mt(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &JSON_ARRAY_MT);
}

/* ---- decoding -------------------------------------------------------------- */

typedef struct Decoder {
  lua_State *L;
  const char *s, *p, *end;
  int depth;
} Decoder;

__attribute__((noreturn)) static void decode_error(Decoder *d, const char *what) {
  luaL_error(d->L, "invalid JSON: %s at byte %d", what, (int)(d->p - d->s) + 1);
  abort(); /* not reached: luaL_error does not return */
}

static void skip_ws(Decoder *d) {
  while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r')) d->p++;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static unsigned read_hex4(Decoder *d) {
  if (d->end - d->p < 4) decode_error(d, "truncated \\u escape");
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval((unsigned char)d->p[i]);
    if (h < 0) decode_error(d, "bad \\u escape");
    v = v * 16 + (unsigned)h;
  }
  d->p += 4;
  return v;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  char buf[4];
  int n;
  if (cp < 0x80) { buf[0] = (char)cp; n = 1; }
  else if (cp < 0x800) { buf[0] = (char)(0xC0 | (cp >> 6)); buf[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
  else if (cp < 0x10000) {
    buf[0] = (char)(0xE0 | (cp >> 12)); buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
  } else {
    buf[0] = (char)(0xF0 | (cp >> 18)); buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); buf[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
  }
  luaL_addlstring(b, buf, (size_t)n);
}

static void decode_string(Decoder *d) {
  luaL_Buffer b;
  d->p++; /* opening quote */
  luaL_buffinit(d->L, &b);
  for (;;) {
    if (d->p >= d->end) decode_error(d, "unterminated string");
    unsigned char c = (unsigned char)*d->p;
    if (c == '"') { d->p++; break; }
    if (c < 0x20) decode_error(d, "control character in string");
    if (c != '\\') {
      const char *start = d->p;
      while (d->p < d->end && *d->p != '"' && *d->p != '\\' && (unsigned char)*d->p >= 0x20) d->p++;
      luaL_addlstring(&b, start, (size_t)(d->p - start));
      continue;
    }
    d->p++;
    if (d->p >= d->end) decode_error(d, "unterminated escape");
    char e = *d->p++;
    switch (e) {
      case '"': luaL_addchar(&b, '"'); break;
      case '\\': luaL_addchar(&b, '\\'); break;
      case '/': luaL_addchar(&b, '/'); break;
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u': {
        unsigned cp = read_hex4(d);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u') decode_error(d, "lone surrogate");
          d->p += 2;
          unsigned lo = read_hex4(d);
          if (lo < 0xDC00 || lo > 0xDFFF) decode_error(d, "lone surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          decode_error(d, "lone surrogate");
        }
        if (cp == 0) {
          d->p -= 6; /* report where the escape starts */
          decode_error(d, "\\u0000 is not allowed");
        }
        add_utf8(&b, cp);
        break;
      }
      default: decode_error(d, "bad escape");
    }
  }
  luaL_pushresult(&b);
}

static void decode_number(Decoder *d) {
  const char *start = d->p;
  bool integral = true;
  if (d->p < d->end && *d->p == '-') d->p++;
  if (d->p >= d->end || !(*d->p >= '0' && *d->p <= '9')) decode_error(d, "bad number");
  while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
  if (d->p < d->end && *d->p == '.') {
    integral = false;
    d->p++;
    if (d->p >= d->end || !(*d->p >= '0' && *d->p <= '9')) decode_error(d, "bad number");
    while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
  }
  if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
    integral = false;
    d->p++;
    if (d->p < d->end && (*d->p == '+' || *d->p == '-')) d->p++;
    if (d->p >= d->end || !(*d->p >= '0' && *d->p <= '9')) decode_error(d, "bad number");
    while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
  }
  char buf[64];
  size_t n = (size_t)(d->p - start);
  char *tmp = n < sizeof buf ? buf : malloc(n + 1);
  if (!tmp) decode_error(d, "out of memory");
  memcpy(tmp, start, n);
  tmp[n] = '\0';
  if (integral) {
    errno = 0;
    long long v = strtoll(tmp, NULL, 10);
    if (errno == 0) {
      if (tmp != buf) free(tmp);
      lua_pushinteger(d->L, (lua_Integer)v);
      return;
    }
  }
  double v = strtod(tmp, NULL);
  if (tmp != buf) free(tmp);
  lua_pushnumber(d->L, v);
}

static void decode_value(Decoder *d);

static void decode_container(Decoder *d, bool array) {
  if (++d->depth > JSON_MAX_DEPTH) decode_error(d, "nested too deeply");
  luaL_checkstack(d->L, 4, "JSON nested too deeply");
  d->p++;
  lua_newtable(d->L);
  if (array) {
    push_array_mt(d->L);
    lua_setmetatable(d->L, -2);
  }
  skip_ws(d);
  char close = array ? ']' : '}';
  if (d->p < d->end && *d->p == close) {
    d->p++;
    d->depth--;
    return;
  }
  lua_Integer i = 1;
  for (;;) {
    skip_ws(d);
    if (array) {
      decode_value(d);
      lua_rawseti(d->L, -2, i++);
    } else {
      if (d->p >= d->end || *d->p != '"') decode_error(d, "expected a string key");
      decode_string(d);
      skip_ws(d);
      if (d->p >= d->end || *d->p != ':') decode_error(d, "expected ':'");
      d->p++;
      skip_ws(d);
      decode_value(d);
      lua_rawset(d->L, -3);
    }
    skip_ws(d);
    if (d->p < d->end && *d->p == ',') { d->p++; continue; }
    if (d->p < d->end && *d->p == close) { d->p++; break; }
    decode_error(d, array ? "expected ',' or ']'" : "expected ',' or '}'");
  }
  d->depth--;
}

static bool match_word(Decoder *d, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(d->end - d->p) >= n && memcmp(d->p, w, n) == 0) {
    d->p += n;
    return true;
  }
  return false;
}

static void decode_value(Decoder *d) {
  skip_ws(d);
  if (d->p >= d->end) decode_error(d, "unexpected end");
  char c = *d->p;
  if (c == '{') decode_container(d, false);
  else if (c == '[') decode_container(d, true);
  else if (c == '"') decode_string(d);
  else if (c == '-' || (c >= '0' && c <= '9')) decode_number(d);
  else if (match_word(d, "true")) lua_pushboolean(d->L, 1);
  else if (match_word(d, "false")) lua_pushboolean(d->L, 0);
  else if (match_word(d, "null")) lua_pushlightuserdata(d->L, NULL);
  else decode_error(d, "unexpected character");
}

void json_push_decoded(lua_State *L, const char *s, size_t len) {
  Decoder d = {L, s, s, s + len, 0};
  decode_value(&d);
  skip_ws(&d);
  if (d.p != d.end) decode_error(&d, "trailing characters");
}

/* ---- encoding -------------------------------------------------------------- */

/*
 * The output buffer. Not a luaL_Buffer: the encoder pushes keys and
 * values while it writes, and a luaL_Buffer needs the stack balanced
 * between its calls. This one lives in a userdata at a fixed stack slot,
 * so the stack above it is free; __gc frees the bytes if an error
 * unwinds the encoder.
 */
typedef struct JBuf {
  lua_State *L;
  char *p;
  size_t n, cap;
} JBuf;

static int jbuf_gc(lua_State *L) {
  JBuf *b = lua_touserdata(L, 1);
  free(b->p);
  b->p = NULL;
  return 0;
}

static void jb_addlstring(JBuf *b, const char *s, size_t n) {
  if (b->cap - b->n < n) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < n) {
      if (cap > ((size_t)-1) / 2) luaL_error(b->L, "cannot encode as JSON: value too large");
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) luaL_error(b->L, "cannot encode as JSON: out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

static void jb_addstring(JBuf *b, const char *s) { jb_addlstring(b, s, strlen(s)); }
static void jb_addchar(JBuf *b, char c) { jb_addlstring(b, &c, 1); }

typedef struct Encoder {
  lua_State *L;
  JBuf *b;
  bool ascii; /* escape non-ASCII as \uXXXX (canonical signing form) */
  int depth;
} Encoder;

/* Decode one UTF-8 sequence; returns its length, 0 when invalid. */
static int utf8_next(const unsigned char *s, size_t n, unsigned *cp) {
  if (s[0] < 0x80) { *cp = s[0]; return 1; }
  int len;
  unsigned min;
  if ((s[0] & 0xE0) == 0xC0) { len = 2; *cp = s[0] & 0x1F; min = 0x80; }
  else if ((s[0] & 0xF0) == 0xE0) { len = 3; *cp = s[0] & 0x0F; min = 0x800; }
  else if ((s[0] & 0xF8) == 0xF0) { len = 4; *cp = s[0] & 0x07; min = 0x10000; }
  else return 0;
  if ((size_t)len > n) return 0;
  for (int i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    *cp = (*cp << 6) | (s[i] & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) return 0;
  return len;
}

static void encode_string(Encoder *e, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  JBuf *b = e->b;
  jb_addchar(b, '"');
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    if (c == 0x7F && e->ascii) {
      /* Python's ensure_ascii escapes DEL too: signatures must match. */
      jb_addlstring(b, "\\u007f", 6);
      i++;
      continue;
    }
    if (c >= 0x80) {
      unsigned cp = 0;
      int len = utf8_next((const unsigned char *)s + i, n - i, &cp);
      if (!len) luaL_error(e->L, "cannot encode as JSON: invalid UTF-8 at byte %d of a string", (int)i + 1);
      if (!e->ascii) {
        jb_addlstring(b, s + i, (size_t)len);
      } else {
        unsigned units[2] = {cp, 0};
        int nu = 1;
        if (cp >= 0x10000) {
          units[0] = 0xD800 + ((cp - 0x10000) >> 10);
          units[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
          nu = 2;
        }
        for (int k = 0; k < nu; k++) {
          char u[6] = {'\\', 'u', hex[(units[k] >> 12) & 15], hex[(units[k] >> 8) & 15],
                       hex[(units[k] >> 4) & 15], hex[units[k] & 15]};
          jb_addlstring(b, u, 6);
        }
      }
      i += (size_t)len;
      continue;
    }
    switch (c) {
      case '"': jb_addstring(b, "\\\""); break;
      case '\\': jb_addstring(b, "\\\\"); break;
      case '\n': jb_addstring(b, "\\n"); break;
      case '\r': jb_addstring(b, "\\r"); break;
      case '\t': jb_addstring(b, "\\t"); break;
      case '\b': jb_addstring(b, "\\b"); break;
      case '\f': jb_addstring(b, "\\f"); break;
      default:
        if (c == 0) luaL_error(e->L, "cannot encode as JSON: a string contains a NUL byte");
        if (c < 0x20) {
          char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
          jb_addlstring(b, u, 6);
        } else {
          jb_addchar(b, (char)c);
        }
    }
    i++;
  }
  jb_addchar(b, '"');
}

static void encode_number(Encoder *e, int idx) {
  char buf[64];
  if (lua_isinteger(e->L, idx)) {
    snprintf(buf, sizeof buf, "%lld", (long long)lua_tointeger(e->L, idx));
  } else {
    double v = lua_tonumber(e->L, idx);
    if (isnan(v) || isinf(v)) luaL_error(e->L, "cannot encode as JSON: %f is not a JSON number", v);
    /* Shortest form that reads back to the same double. */
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(buf, sizeof buf, "%.*g", prec, v);
      if (strtod(buf, NULL) == v) break;
    }
    /* A float that prints like an integer (100, -0) keeps a fraction, so
     * it reads back as a float, as Python writes it (100.0, -0.0). */
    if (!strpbrk(buf, ".eE")) strcat(buf, ".0");
  }
  jb_addstring(e->b, buf);
}

/* Array when marked, or when the keys are exactly 1..n with n >= 1. */
static bool is_array(lua_State *L, int idx, lua_Integer *n) {
  if (lua_getmetatable(L, idx)) {
    push_array_mt(L);
    bool marked = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (marked) {
      *n = (lua_Integer)lua_rawlen(L, idx);
      return true;
    }
  }
  lua_Integer count = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return false;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k > max) max = k;
    count++;
  }
  *n = max;
  return count > 0 && count == max;
}

static void encode_value(Encoder *e, int idx);

static int key_cmp(const void *a, const void *b) {
  const struct { const char *s; size_t n; } *x = a, *y = b;
  size_t m = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->s, y->s, m);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

static void encode_table(Encoder *e, int idx) {
  lua_State *L = e->L;
  if (++e->depth > JSON_MAX_DEPTH) luaL_error(L, "cannot encode as JSON: nested too deeply (or a cycle)");
  luaL_checkstack(L, 6, "JSON nested too deeply");
  lua_Integer n;
  if (is_array(L, idx, &n)) {
    jb_addchar(e->b, '[');
    for (lua_Integer i = 1; i <= n; i++) {
      if (i > 1) jb_addchar(e->b, ',');
      lua_rawgeti(L, idx, i);
      encode_value(e, lua_gettop(L));
      lua_pop(L, 1);
    }
    jb_addchar(e->b, ']');
    e->depth--;
    return;
  }
  /* Object: collect string keys (integer keys become their text), sort. */
  lua_newtable(L); /* keys as strings, at top */
  int keys = lua_gettop(L);
  lua_Integer nk = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int kt = lua_type(L, -1);
    if (kt == LUA_TNUMBER && lua_isinteger(L, -1)) {
      lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, -1));
    } else if (kt == LUA_TSTRING) {
      lua_pushvalue(L, -1);
    } else {
      luaL_error(L, "cannot encode as JSON: a table key of type %s", luaL_typename(L, -1));
    }
    lua_rawseti(L, keys, ++nk);
  }
  struct Key { const char *s; size_t n; } *sorted = lua_newuserdatauv(L, (size_t)nk * sizeof *sorted + 1, 0);
  for (lua_Integer i = 0; i < nk; i++) {
    lua_rawgeti(L, keys, i + 1);
    sorted[i].s = lua_tolstring(L, -1, &sorted[i].n); /* anchored in keys */
    lua_pop(L, 1);
  }
  qsort(sorted, (size_t)nk, sizeof *sorted, key_cmp);
  jb_addchar(e->b, '{');
  for (lua_Integer i = 0; i < nk; i++) {
    if (i) jb_addchar(e->b, ',');
    encode_string(e, sorted[i].s, sorted[i].n);
    jb_addchar(e->b, ':');
    lua_pushlstring(L, sorted[i].s, sorted[i].n);
    if (lua_rawget(L, idx) == LUA_TNIL) { /* the key was an integer */
      lua_pop(L, 1);
      lua_pushinteger(L, (lua_Integer)strtoll(sorted[i].s, NULL, 10));
      lua_rawget(L, idx);
    }
    encode_value(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  jb_addchar(e->b, '}');
  lua_pop(L, 2); /* sorted, keys */
  e->depth--;
}

static void encode_value(Encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: jb_addstring(e->b, "null"); break;
    case LUA_TBOOLEAN: jb_addstring(e->b, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER: encode_number(e, idx); break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      encode_string(e, s, n);
      break;
    }
    case LUA_TTABLE: encode_table(e, idx); break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {
        jb_addstring(e->b, "null");
        break;
      }
      /* fallthrough */
    default:
      if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
        /* Decimals, instants: their exact text, as a JSON string. */
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        encode_string(e, s, n);
        lua_pop(L, 1);
        break;
      }
      luaL_error(L, "cannot encode as JSON: a value of type %s", luaL_typename(L, idx));
  }
}

/* Encoding runs in a buffer on the stack, so the value must sit below it. */
static const char *encode_at(lua_State *L, int idx, bool ascii, size_t *len) {
  idx = lua_absindex(L, idx);
  JBuf *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->L = L;
  b->p = NULL;
  b->n = b->cap = 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &JSON_BUF_MT);
  lua_setmetatable(L, -2);
  Encoder e = {L, b, ascii, 0};
  encode_value(&e, idx);
  lua_pushlstring(L, b->p ? b->p : "", b->n);
  lua_remove(L, -2); /* the buffer; its __gc frees the bytes */
  return lua_tolstring(L, -1, len);
}

const char *json_push_encoded(lua_State *L, int idx, size_t *len) {
  return encode_at(L, idx, false, len);
}

/* core.json_encode(value [, {ascii=true}]) -> text */
static int json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  bool ascii = false;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "ascii");
    ascii = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  encode_at(L, 1, ascii, NULL);
  return 1;
}

/* core.json_decode(text) -> value */
static int json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  json_push_decoded(L, s, len);
  return 1;
}

void json_array_mark(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  push_array_mt(L);
  lua_setmetatable(L, idx);
}

/* core.json_array([t]) -> t marked as a JSON array */
static int json_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  else luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  push_array_mt(L);
  lua_setmetatable(L, 1);
  return 1;
}

/* core.is_json_array(t) -> boolean */
static int json_is_array(lua_State *L) {
  lua_Integer n;
  lua_pushboolean(L, lua_istable(L, 1) && is_array(L, 1, &n));
  return 1;
}

void json_open(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &JSON_BUF_MT) == LUA_TNIL) {
    lua_newtable(L);
    lua_pushcfunction(L, jbuf_gc);
    lua_setfield(L, -2, "__gc");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &JSON_BUF_MT);
  }
  lua_pop(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &JSON_ARRAY_MT) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushliteral(L, "json.array");
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &JSON_ARRAY_MT);
  }
  lua_setfield(L, -2, "json_array_mt");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  static const luaL_Reg fns[] = {
    {"json_encode", json_encode},
    {"json_decode", json_decode},
    {"json_array", json_array},
    {"is_json_array", json_is_array},
    {NULL, NULL}
  };
  luaL_setfuncs(L, fns, 0);
}
