/*
 * params.c: Lua values to statement parameters.
 *
 * Parameters always travel separately from the SQL text (PQexecPrepared),
 * never interpolated. Most go as text, which PostgreSQL parses with the
 * parameter's declared type; bytea goes binary so every byte survives.
 * Each conversion is exact: integers print in full, floats with the
 * shortest text that reads back bit-exact (never Lua's "%.14g"), Decimals
 * and Instants with all their digits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Type OIDs (pg_type.h is a server header; these values are fixed). */
#define OID_BYTEA 17
#define OID_NUMERIC 1700
#define OID_JSON 114
#define OID_JSONB 3802
#define OID_FLOAT4 700
#define OID_FLOAT8 701

/* PostgreSQL array literal from a Lua sequence ({1,2} -> {"1","2"}). */
static void push_array_literal(lua_State *L, int idx, int i);

static bool is_numeric_type(Oid t) { return t == OID_NUMERIC; }
static bool is_json_type(Oid t) { return t == OID_JSON || t == OID_JSONB; }

/* Convert one value to text on the stack top; returns false for NULL. */
static bool push_param(lua_State *L, int idx, int i, Oid type, int *format) {
  *format = 0;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return false;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { /* core.null */
        if (is_json_type(type)) {
          lua_pushliteral(L, "null");
          return true;
        }
        return false;
      }
      break;
    case LUA_TBOOLEAN:
      if (is_json_type(type)) lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
      else lua_pushstring(L, lua_toboolean(L, idx) ? "t" : "f");
      return true;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
        return true;
      } else {
        double v = lua_tonumber(L, idx);
        if (is_numeric_type(type)) {
          luaL_error(L, "parameter $%d: got the float %s for a NUMERIC, which is not exact; "
                        "pass a string or a Decimal", i + 1, lua_tostring(L, idx));
        }
        if (isnan(v)) { lua_pushliteral(L, "NaN"); return true; }
        if (isinf(v)) { lua_pushstring(L, v > 0 ? "Infinity" : "-Infinity"); return true; }
        char buf[40];
        for (int prec = 15; prec <= 17; prec++) {
          snprintf(buf, sizeof buf, "%.*g", prec, v);
          if (strtod(buf, NULL) == v) break;
        }
        lua_pushstring(L, buf);
        return true;
      }
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (type == OID_BYTEA) {
        *format = 1;
        lua_pushvalue(L, idx);
        return true;
      }
      if (memchr(s, '\0', len))
        luaL_error(L, "parameter $%d: a string with a NUL byte cannot be sent as text "
                      "(PostgreSQL text cannot hold NUL; use a bytea column)", i + 1);
      /* For a JSON parameter a string is JSON text, as in SQL; tables are
       * encoded. */
      lua_pushvalue(L, idx);
      return true;
    }
    case LUA_TTABLE:
      if (is_json_type(type) || type == 0) {
        json_push_encoded(L, idx, NULL);
        return true;
      }
      push_array_literal(L, idx, i);
      return true;
    case LUA_TUSERDATA:
      if (dec_is(L, idx)) {
        dec_push_text(L, idx, NULL);
        return true;
      }
      if (inst_is(L, idx)) {
        char buf[64];
        inst_format_pg(inst_get(L, idx), buf, sizeof buf);
        lua_pushstring(L, buf);
        return true;
      }
      break;
    default:
      break;
  }
  luaL_error(L, "parameter $%d: cannot send a value of type %s", i + 1, luaL_typename(L, idx));
  return false;
}

/* Each element is made into one string on top of the stack and handed
 * to the buffer with luaL_addvalue: between buffer operations the stack
 * must be back at the buffer's level (a buffer that grows moves its box),
 * so nothing else may stay above it while characters are added. */
static void push_array_literal(lua_State *L, int idx, int i) {
  idx = lua_absindex(L, idx);
  luaL_Buffer b;
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  luaL_checkstack(L, 6, "array parameter");
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '{');
  for (lua_Integer k = 1; k <= n; k++) {
    if (k > 1) luaL_addchar(&b, ',');
    lua_rawgeti(L, idx, k);                 /* elem */
    int fmt;
    int top = lua_gettop(L);
    if (lua_istable(L, -1)) {
      push_array_literal(L, -1, i);         /* elem literal */
      lua_remove(L, -2);
      luaL_addvalue(&b);
      continue;
    }
    if (!push_param(L, top, i, 0, &fmt)) {
      lua_pop(L, 1);
      luaL_addstring(&b, "NULL");
      continue;
    }
    size_t len;                             /* elem text */
    const char *s = lua_tolstring(L, -1, &len);
    luaL_Buffer e;
    luaL_buffinit(L, &e);
    luaL_addchar(&e, '"');
    for (size_t j = 0; j < len; j++) {
      if (s[j] == '"' || s[j] == '\\') luaL_addchar(&e, '\\');
      luaL_addchar(&e, s[j]);
    }
    luaL_addchar(&e, '"');
    luaL_pushresult(&e);                    /* elem text quoted */
    lua_replace(L, -3);                     /* quoted text */
    lua_pop(L, 1);                          /* quoted */
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '}');
  luaL_pushresult(&b);
}

void param_collect(lua_State *L, int first, int n, const Oid *types, Params *p) {
  if (n > CARACAL_MAX_PARAMS)
    luaL_error(L, "too many parameters: %d (at most %d in one statement)", n, CARACAL_MAX_PARAMS);
  p->n = n;
  if (n == 0) {
    p->values = NULL;
    p->lengths = p->formats = NULL;
    return;
  }
  /* One userdata holds the three arrays; the strings stay on the stack. */
  size_t bytes = (size_t)n * (sizeof(char *) + 2 * sizeof(int));
  char *mem = lua_newuserdatauv(L, bytes, 0);
  p->values = (const char **)mem;
  p->lengths = (int *)(mem + (size_t)n * sizeof(char *));
  p->formats = p->lengths + n;
  luaL_checkstack(L, n + 4, "too many parameters");
  for (int i = 0; i < n; i++) {
    int fmt;
    if (push_param(L, first + i, i, types ? types[i] : 0, &fmt)) {
      size_t len;
      p->values[i] = lua_tolstring(L, -1, &len);
      p->lengths[i] = (int)len;
      p->formats[i] = fmt;
    } else {
      lua_pushnil(L); /* keep one slot per parameter */
      p->values[i] = NULL;
      p->lengths[i] = 0;
      p->formats[i] = 0;
    }
  }
}
