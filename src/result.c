/*
 * result.c: PGresult rows to Lua tables, decoded in C.
 *
 * Results of prepared statements come back in binary whenever every
 * column has a decoder here (res_binary_ok), which makes timestamps
 * independent of the session's DateStyle and TimeZone and skips all
 * text parsing. Other results (a column of a type we do not decode in
 * binary, or a simple-protocol script) come back as text and are decoded
 * by type OID. Either way: int2/4/8 are Lua integers, bool is boolean,
 * NUMERIC a Decimal, timestamps Instants, uuid a lowercase string, JSON a
 * table, SQL NULL nil (NULL array elements are core.null).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum {
  T_BOOL = 16, T_BYTEA = 17, T_CHAR = 18, T_NAME = 19, T_INT8 = 20, T_INT2 = 21, T_INT4 = 23,
  T_REGPROC = 24, T_TEXT = 25, T_OID = 26, T_JSON = 114, T_XML = 142, T_FLOAT4 = 700,
  T_FLOAT8 = 701, T_UNKNOWN = 705, T_BPCHAR = 1042, T_VARCHAR = 1043, T_DATE = 1082,
  T_TIMESTAMP = 1114, T_TIMESTAMPTZ = 1184, T_NUMERIC = 1700, T_REGCLASS = 2205,
  T_VOID = 2278, T_UUID = 2950, T_JSONB = 3802
};

/* Element type of the array types we decode, 0 for anything else. */
static Oid array_element(Oid t) {
  switch (t) {
    case 1000: return T_BOOL;
    case 1001: return T_BYTEA;
    case 1003: return T_NAME;
    case 1005: return T_INT2;
    case 1007: return T_INT4;
    case 1009: return T_TEXT;
    case 1014: return T_BPCHAR;
    case 1015: return T_VARCHAR;
    case 1016: return T_INT8;
    case 1021: return T_FLOAT4;
    case 1022: return T_FLOAT8;
    case 1028: return T_OID;
    case 1115: return T_TIMESTAMP;
    case 1182: return T_DATE;
    case 1185: return T_TIMESTAMPTZ;
    case 1231: return T_NUMERIC;
    case 199: return T_JSON;
    case 2951: return T_UUID;
    case 3807: return T_JSONB;
    default: return 0;
  }
}

static bool scalar_binary_ok(Oid t) {
  switch (t) {
    case T_BOOL: case T_BYTEA: case T_CHAR: case T_NAME: case T_INT8: case T_INT2: case T_INT4:
    case T_REGPROC: case T_TEXT: case T_OID: case T_JSON: case T_XML: case T_FLOAT4:
    case T_FLOAT8: case T_UNKNOWN: case T_BPCHAR: case T_VARCHAR: case T_DATE: case T_TIMESTAMP:
    case T_TIMESTAMPTZ: case T_NUMERIC: case T_REGCLASS: case T_VOID: case T_UUID: case T_JSONB:
      return true;
    default:
      return false;
  }
}

bool res_binary_ok(const PGresult *desc) {
  int n = PQnfields(desc);
  for (int i = 0; i < n; i++) {
    Oid t = PQftype(desc, i);
    if (!scalar_binary_ok(t) && !array_element(t)) return false;
  }
  return true;
}

/* ---- binary -------------------------------------------------------------- */

static uint16_t be16(const char *p) {
  return (uint16_t)(((unsigned char)p[0] << 8) | (unsigned char)p[1]);
}
static uint32_t be32(const char *p) {
  return ((uint32_t)(unsigned char)p[0] << 24) | ((uint32_t)(unsigned char)p[1] << 16) |
         ((uint32_t)(unsigned char)p[2] << 8) | (uint32_t)(unsigned char)p[3];
}
static uint64_t be64(const char *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

static void push_date(lua_State *L, int64_t days_since_2000) {
  int64_t y;
  int m, d;
  char buf[32];
  inst_civil_from_days(days_since_2000 + 10957, &y, &m, &d); /* 10957 days: 1970 to 2000 */
  /* snprintf, not lua_pushfstring: that one has no widths or padding. */
  snprintf(buf, sizeof buf, "%04lld-%02d-%02d", (long long)y, m, d);
  lua_pushstring(L, buf);
}

static void push_binary(lua_State *L, Oid t, const char *v, int len);

static const char *array_error = "malformed binary array from the server";

/* Nested dimensions: element k of dimension dim, advancing *p. */
static void push_array_dim(lua_State *L, Oid elem, int ndim, const int *dims, int dim,
                           const char **p, const char *end) {
  luaL_checkstack(L, 3, "array nested too deeply");
  lua_createtable(L, dims[dim], 0);
  json_array_mark(L, -1);
  for (int k = 1; k <= dims[dim]; k++) {
    if (dim + 1 < ndim) {
      push_array_dim(L, elem, ndim, dims, dim + 1, p, end);
    } else {
      if (end - *p < 4) luaL_error(L, "%s", array_error);
      int32_t len = (int32_t)be32(*p);
      *p += 4;
      if (len < 0) {
        lua_pushlightuserdata(L, NULL); /* keep the position: core.null */
      } else {
        if (end - *p < len) luaL_error(L, "%s", array_error);
        push_binary(L, elem, *p, len);
        *p += len;
      }
    }
    lua_rawseti(L, -2, k);
  }
}

static void push_binary_array(lua_State *L, const char *v, int len) {
  const char *p = v, *end = v + len;
  if (len < 12) luaL_error(L, "%s", array_error);
  int ndim = (int32_t)be32(p);
  Oid elem = be32(p + 8);
  p += 12;
  if (ndim == 0) {
    lua_newtable(L);
    json_array_mark(L, -1);
    return;
  }
  if (ndim < 0 || ndim > 6 || end - p < 8 * ndim) luaL_error(L, "%s", array_error);
  int dims[6];
  for (int i = 0; i < ndim; i++) {
    dims[i] = (int32_t)be32(p);
    if (dims[i] < 0) luaL_error(L, "%s", array_error);
    p += 8; /* length, lower bound */
  }
  push_array_dim(L, elem, ndim, dims, 0, &p, end);
}

static void push_binary(lua_State *L, Oid t, const char *v, int len) {
  switch (t) {
    case T_BOOL:
      lua_pushboolean(L, len > 0 && v[0] != 0);
      return;
    case T_INT2:
      lua_pushinteger(L, (int16_t)be16(v));
      return;
    case T_INT4:
      lua_pushinteger(L, (int32_t)be32(v));
      return;
    case T_OID: case T_REGPROC: case T_REGCLASS:
      lua_pushinteger(L, (lua_Integer)be32(v));
      return;
    case T_INT8:
      lua_pushinteger(L, (lua_Integer)(int64_t)be64(v));
      return;
    case T_FLOAT4: {
      uint32_t u = be32(v);
      float f;
      memcpy(&f, &u, sizeof f);
      lua_pushnumber(L, (lua_Number)f);
      return;
    }
    case T_FLOAT8: {
      uint64_t u = be64(v);
      double d;
      memcpy(&d, &u, sizeof d);
      lua_pushnumber(L, d);
      return;
    }
    case T_NUMERIC:
      if (dec_push_pgbinary(L, v, len) != 0) {
        /* NaN is the one valid value we refuse: it is no amount. */
        luaL_error(L, "cannot decode a NUMERIC value (NaN or malformed) as a Decimal");
      }
      return;
    case T_TIMESTAMP: case T_TIMESTAMPTZ: {
      int64_t us = (int64_t)be64(v);
      if (us == INT64_MAX || us == INT64_MIN) {
        lua_pushstring(L, us > 0 ? "infinity" : "-infinity");
        return;
      }
      inst_push(L, us + INST_PG_EPOCH_US);
      return;
    }
    case T_DATE: {
      int32_t d = (int32_t)be32(v);
      if (d == INT32_MAX || d == INT32_MIN) lua_pushstring(L, d > 0 ? "infinity" : "-infinity");
      else push_date(L, d);
      return;
    }
    case T_UUID: {
      char out[37];
      if (len != 16) luaL_error(L, "malformed binary uuid from the server");
      uuid_format((const unsigned char *)v, out);
      lua_pushlstring(L, out, 36);
      return;
    }
    case T_JSONB:
      if (len < 1 || v[0] != 1) luaL_error(L, "unsupported jsonb binary version");
      json_push_decoded(L, v + 1, (size_t)len - 1);
      return;
    case T_JSON:
      json_push_decoded(L, v, (size_t)len);
      return;
    case T_VOID:
      lua_pushnil(L);
      return;
    default:
      if (array_element(t)) {
        push_binary_array(L, v, len);
        return;
      }
      /* text, varchar, bpchar, name, char, xml, unknown, bytea: raw bytes */
      lua_pushlstring(L, v, (size_t)len);
  }
}

/* ---- text ---------------------------------------------------------------- */

static void push_text(lua_State *L, Oid t, const char *v, int len) {
  switch (t) {
    case T_BOOL:
      lua_pushboolean(L, v[0] == 't');
      return;
    case T_INT2: case T_INT4: case T_INT8: case T_OID:
      lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
      return;
    case T_FLOAT4: case T_FLOAT8:
      lua_pushnumber(L, strtod(v, NULL)); /* also "NaN", "Infinity" */
      return;
    case T_NUMERIC:
      dec_push_string(L, v, (size_t)len);
      return;
    case T_TIMESTAMP: case T_TIMESTAMPTZ: {
      int64_t us;
      if (strcmp(v, "infinity") == 0 || strcmp(v, "-infinity") == 0) {
        lua_pushstring(L, v);
        return;
      }
      if (inst_parse(v, (size_t)len, &us) != 0)
        luaL_error(L, "cannot decode the timestamp '%s' (is DateStyle ISO?)", v);
      inst_push(L, us);
      return;
    }
    case T_UUID:
      lua_pushlstring(L, v, (size_t)len);
      return;
    case T_JSON: case T_JSONB:
      json_push_decoded(L, v, (size_t)len);
      return;
    case T_BYTEA: {
      size_t n;
      unsigned char *raw = PQunescapeBytea((const unsigned char *)v, &n);
      if (!raw) luaL_error(L, "out of memory decoding bytea");
      lua_pushlstring(L, (const char *)raw, n);
      PQfreemem(raw);
      return;
    }
    case T_VOID:
      lua_pushnil(L);
      return;
    default:
      lua_pushlstring(L, v, (size_t)len);
  }
}

void res_push_value(lua_State *L, const PGresult *res, int row, int col, bool binary) {
  if (PQgetisnull(res, row, col)) {
    lua_pushnil(L);
    return;
  }
  const char *v = PQgetvalue(res, row, col);
  int len = PQgetlength(res, row, col);
  if (binary) push_binary(L, PQftype(res, col), v, len);
  else push_text(L, PQftype(res, col), v, len);
}

void res_push_rows(lua_State *L, const PGresult *res, bool binary) {
  int nrows = PQntuples(res), ncols = PQnfields(res);
  luaL_checkstack(L, 6, "result");
  lua_createtable(L, nrows, 1); /* rows */
  int rows = lua_gettop(L);
  lua_createtable(L, ncols, 0); /* column names, in order */
  for (int c = 0; c < ncols; c++) {
    lua_pushstring(L, PQfname(res, c));
    lua_rawseti(L, -2, c + 1);
  }
  lua_setfield(L, rows, "columns");
  /* Interned names, reused for every row. */
  lua_createtable(L, ncols, 0);
  int names = lua_gettop(L);
  for (int c = 0; c < ncols; c++) {
    lua_pushstring(L, PQfname(res, c));
    lua_rawseti(L, names, c + 1);
  }
  for (int r = 0; r < nrows; r++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      if (PQgetisnull(res, r, c)) continue;
      lua_rawgeti(L, names, c + 1);
      const char *v = PQgetvalue(res, r, c);
      int len = PQgetlength(res, r, c);
      if (binary) push_binary(L, PQftype(res, c), v, len);
      else push_text(L, PQftype(res, c), v, len);
      lua_rawset(L, -3);
    }
    lua_rawseti(L, rows, r + 1);
  }
  lua_pop(L, 1); /* names */
}
