/*
 * instant.c: UTC instants with microsecond precision, the Lua face of
 * PostgreSQL's timestamptz.
 *
 * An Instant is an immutable userdata holding int64 microseconds since
 * 1970-01-01T00:00:00Z. Calendar conversion is pure integer arithmetic
 * (Howard Hinnant's days-from-civil), so nothing depends on TZ, the C
 * library's time functions or the size of time_t, and instants before
 * 1970 (negative microseconds) and after 2100 convert the same way.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define US_PER_SEC INT64_C(1000000)
#define US_PER_DAY INT64_C(86400000000)
#define INST_SHOW_MAX 64 /* bytes of a bad value quoted in messages */

typedef struct Instant {
  int64_t us;
} Instant;

/* A broken-down UTC time. */
typedef struct Civil {
  int64_t year;
  int month, day, hour, min, sec, usec;
  int wday; /* 1 = Sunday, as os.date */
  int yday; /* 1 = January 1st */
} Civil;

/* Days since 1970-01-01 of a proleptic Gregorian date (any year). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;                                 /* 0..399 */
  int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* 0..365 */
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;         /* 0..146096 */
  return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil. */
void inst_civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

static int is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m) {
  static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Split microseconds into UTC fields; floor division, so negative values
 * land in the right day (-1 us is 1969-12-31T23:59:59.999999). */
static void to_civil(int64_t us, Civil *c) {
  int64_t days = us / US_PER_DAY, rem = us % US_PER_DAY;
  if (rem < 0) {
    rem += US_PER_DAY;
    days--;
  }
  inst_civil_from_days(days, &c->year, &c->month, &c->day);
  c->usec = (int)(rem % US_PER_SEC);
  int64_t secs = rem / US_PER_SEC;
  c->hour = (int)(secs / 3600);
  c->min = (int)(secs / 60 % 60);
  c->sec = (int)(secs % 60);
  c->wday = (int)(((days + 4) % 7 + 7) % 7) + 1; /* 1970-01-01 was a Thursday */
  c->yday = (int)(days - days_from_civil(c->year, 1, 1)) + 1;
}

/* The earliest and latest instants inst_parse accepts: 0001..9999. */
static int64_t inst_min(void) {
  return days_from_civil(1, 1, 1) * US_PER_DAY;
}
static int64_t inst_max(void) {
  return days_from_civil(9999, 12, 31) * US_PER_DAY + US_PER_DAY - 1;
}

/* Read exactly n digits at s[*p] into *v; 0 ok, -1 otherwise. */
static int read_digits(const char *s, size_t len, size_t *p, int n, int *v) {
  int x = 0;
  if (*p + (size_t)n > len) return -1;
  for (int i = 0; i < n; i++) {
    char ch = s[*p + (size_t)i];
    if (ch < '0' || ch > '9') return -1;
    x = x * 10 + (ch - '0');
  }
  *p += (size_t)n;
  *v = x;
  return 0;
}

/*
 * ISO 8601 as PostgreSQL prints and people write it:
 *   YYYY-MM-DD
 *   YYYY-MM-DD(T| )HH:MM[:SS[.f{1,6}]][offset]
 *   offset: Z | (+|-)HH | (+|-)HHMM | (+|-)HH:MM | (+|-)HH:MM:SS
 * No offset means UTC. Years 0001..9999 after the offset is applied;
 * PostgreSQL's " BC" suffix, leap seconds and 24:00 are refused.
 */
int inst_parse(const char *s, size_t len, int64_t *out) {
  size_t p = 0;
  int year, month, day, hour = 0, min = 0, sec = 0, usec = 0;
  int64_t offset = 0; /* seconds east of UTC */
  if (read_digits(s, len, &p, 4, &year) || p >= len || s[p++] != '-' ||
      read_digits(s, len, &p, 2, &month) || p >= len || s[p++] != '-' ||
      read_digits(s, len, &p, 2, &day))
    return -1;
  if (p < len) {
    if (s[p] != 'T' && s[p] != 't' && s[p] != ' ') return -1;
    p++;
    if (read_digits(s, len, &p, 2, &hour) || p >= len || s[p++] != ':' ||
        read_digits(s, len, &p, 2, &min))
      return -1;
    if (p < len && s[p] == ':') {
      p++;
      if (read_digits(s, len, &p, 2, &sec)) return -1;
      if (p < len && s[p] == '.') {
        int nd = 0;
        p++;
        while (p < len && s[p] >= '0' && s[p] <= '9') {
          if (++nd > 6) return -1; /* finer than a microsecond */
          usec = usec * 10 + (s[p++] - '0');
        }
        if (nd == 0) return -1;
        for (; nd < 6; nd++) usec *= 10;
      }
    }
    if (p < len && (s[p] == 'Z' || s[p] == 'z')) {
      p++;
    } else if (p < len && (s[p] == '+' || s[p] == '-')) {
      int sign = s[p++] == '-' ? -1 : 1, oh, om = 0, os = 0;
      if (read_digits(s, len, &p, 2, &oh)) return -1;
      if (p < len && s[p] == ':') {
        p++;
        if (read_digits(s, len, &p, 2, &om)) return -1;
        if (p < len && s[p] == ':') {
          p++;
          if (read_digits(s, len, &p, 2, &os)) return -1;
        }
      } else if (p < len && read_digits(s, len, &p, 2, &om)) {
        return -1;
      }
      if (oh > 23 || om > 59 || os > 59) return -1;
      offset = sign * ((int64_t)oh * 3600 + om * 60 + os);
    }
    if (p != len) return -1;
  }
  if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
      hour > 23 || min > 59 || sec > 59)
    return -1;
  int64_t secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec - offset;
  int64_t us = secs * US_PER_SEC + usec;
  if (us < inst_min() || us > inst_max()) return -1;
  *out = us;
  return 0;
}

/* Write the date and time part "YYYY-MM-DD<sep>HH:MM:SS". With expanded,
 * years outside 0000..9999 take ISO's sign (-0001, +10000); otherwise the
 * year is printed as it is. Returns what snprintf returns. */
static int format_civil(const Civil *c, char sep, int expanded, char *buf, size_t buflen) {
  char year[24];
  if (c->year < 0) snprintf(year, sizeof year, "-%04lld", (long long)-c->year);
  else if (c->year > 9999 && expanded) snprintf(year, sizeof year, "+%lld", (long long)c->year);
  else snprintf(year, sizeof year, "%04lld", (long long)c->year);
  return snprintf(buf, buflen, "%s-%02d-%02d%c%02d:%02d:%02d", year, c->month, c->day, sep,
                  c->hour, c->min, c->sec);
}

/* Push ISO 8601 text: "2024-01-02T03:04:05[.ffffff]" plus zone (may be
 * ""); the fraction only when there is one, then always six digits. */
static const char *push_iso(lua_State *L, int64_t us, const char *zone) {
  Civil c;
  char buf[64];
  to_civil(us, &c);
  int n = format_civil(&c, 'T', 1, buf, sizeof buf);
  if (c.usec != 0) n += snprintf(buf + n, sizeof buf - (size_t)n, ".%06d", c.usec);
  snprintf(buf + n, sizeof buf - (size_t)n, "%s", zone);
  return lua_pushstring(L, buf);
}

/*
 * "2024-01-02 03:04:05.123456+00", which PostgreSQL reads back exactly.
 * Years before 0001 use PostgreSQL's " BC" suffix (year 0 is 1 BC).
 * Returns the length of the full text, like snprintf; 48 bytes always
 * suffice.
 */
size_t inst_format_pg(int64_t micros, char *buf, size_t buflen) {
  Civil c;
  to_civil(micros, &c);
  int bc = c.year <= 0;
  if (bc) c.year = 1 - c.year;
  int n = format_civil(&c, ' ', 0, buf, buflen);
  size_t used = (size_t)n < buflen ? (size_t)n : buflen;
  n += snprintf(buf + used, buflen - used, ".%06d+00%s", c.usec, bc ? " BC" : "");
  return (size_t)n;
}

/* ---- Instant userdata ---------------------------------------------------- */

void inst_push(lua_State *L, int64_t micros) {
  Instant *t = lua_newuserdatauv(L, sizeof *t, 0);
  t->us = micros;
  luaL_setmetatable(L, CARACAL_INSTANT_MT);
}

bool inst_is(lua_State *L, int idx) {
  return luaL_testudata(L, idx, CARACAL_INSTANT_MT) != NULL;
}

int64_t inst_get(lua_State *L, int idx) {
  return ((Instant *)luaL_checkudata(L, idx, CARACAL_INSTANT_MT))->us;
}

/* Seconds (integer or float) at idx as microseconds; floats are rounded
 * to the nearest microsecond. Raises when not a number or out of range. */
static int64_t seconds_to_us(lua_State *L, int idx) {
  if (lua_isinteger(L, idx)) {
    lua_Integer s = lua_tointeger(L, idx);
    if (s > INT64_MAX / US_PER_SEC || s < INT64_MIN / US_PER_SEC)
      luaL_error(L, "Instant: result out of range");
    return s * US_PER_SEC;
  }
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "Instant: expected seconds (a number), got %s", luaL_typename(L, idx));
  double us = round(lua_tonumber(L, idx) * 1e6);
  /* 2^63 is exact in a double; anything not strictly inside is out. */
  if (!(us > -9223372036854775808.0 && us < 9223372036854775808.0))
    luaL_error(L, "Instant: result out of range");
  return (int64_t)us;
}

/* a + b for microseconds, raising instead of wrapping. */
static int64_t add_us(lua_State *L, int64_t a, int64_t b) {
  if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b))
    luaL_error(L, "Instant: result out of range");
  return a + b;
}

/* ---- Lua functions ------------------------------------------------------ */

static int l_utcnow(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  inst_push(L, (int64_t)ts.tv_sec * US_PER_SEC + ts.tv_nsec / 1000);
  return 1;
}

/* Instant(x): x an ISO 8601 string, Unix seconds (as os.time() gives;
 * a float is rounded to the microsecond) or an Instant (returned as is:
 * Instants are immutable). */
static int l_instant(lua_State *L) {
  switch (lua_type(L, 1)) {
    case LUA_TUSERDATA:
      inst_get(L, 1);
      lua_settop(L, 1);
      return 1;
    case LUA_TNUMBER:
      inst_push(L, seconds_to_us(L, 1));
      return 1;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, 1, &len);
      int64_t us;
      if (inst_parse(s, len, &us) == 0) {
        inst_push(L, us);
        return 1;
      }
      lua_pushlstring(L, s, len > INST_SHOW_MAX ? INST_SHOW_MAX : len);
      return luaL_error(L, "Instant: invalid ISO 8601 instant '%s%s'", lua_tostring(L, -1),
                        len > INST_SHOW_MAX ? "..." : "");
    }
    default:
      return luaL_typeerror(L, 1, "ISO 8601 string, Unix seconds or Instant");
  }
}

static int l_from_micros(lua_State *L) {
  inst_push(L, luaL_checkinteger(L, 1));
  return 1;
}

static int l_is_instant(lua_State *L) {
  lua_pushboolean(L, inst_is(L, 1));
  return 1;
}

/* core._instant_format_pg(t) -> inst_format_pg's text, for the specs. */
static int l_format_pg(lua_State *L) {
  char buf[48];
  size_t n = inst_format_pg(inst_get(L, 1), buf, sizeof buf);
  lua_pushlstring(L, buf, n < sizeof buf ? n : sizeof buf - 1);
  return 1;
}

/* Lua calls __eq only for two userdata, which may be of another type. */
static int m_eq(lua_State *L) {
  const Instant *a = luaL_testudata(L, 1, CARACAL_INSTANT_MT);
  const Instant *b = luaL_testudata(L, 2, CARACAL_INSTANT_MT);
  lua_pushboolean(L, a && b && a->us == b->us);
  return 1;
}

static int m_lt(lua_State *L) {
  lua_pushboolean(L, inst_get(L, 1) < inst_get(L, 2));
  return 1;
}

static int m_le(lua_State *L) {
  lua_pushboolean(L, inst_get(L, 1) <= inst_get(L, 2));
  return 1;
}

static int m_tostring(lua_State *L) {
  push_iso(L, inst_get(L, 1), "Z");
  return 1;
}

/* Instant + seconds, seconds + Instant. */
static int m_add(lua_State *L) {
  int ti = inst_is(L, 1) ? 1 : 2, ni = 3 - ti;
  if (inst_is(L, ni)) return luaL_error(L, "Instant: cannot add two Instants");
  inst_push(L, add_us(L, inst_get(L, ti), seconds_to_us(L, ni)));
  return 1;
}

/* Instant - seconds -> Instant; Instant - Instant -> seconds (float). */
static int m_sub(lua_State *L) {
  if (!inst_is(L, 1)) return luaL_error(L, "Instant: cannot subtract an Instant from a %s",
                                        luaL_typename(L, 1));
  int64_t a = inst_get(L, 1);
  if (inst_is(L, 2)) {
    int64_t b = inst_get(L, 2);
    if ((b < 0 && a <= INT64_MAX + b) || (b >= 0 && a >= INT64_MIN + b)) {
      /* One rounding: exact integer difference, then the division. */
      lua_pushnumber(L, (lua_Number)(a - b) / 1e6);
    } else { /* the difference overflows int64: split off the seconds */
      int64_t ds = a / US_PER_SEC - b / US_PER_SEC, du = a % US_PER_SEC - b % US_PER_SEC;
      lua_pushnumber(L, (lua_Number)ds + (lua_Number)du / 1e6);
    }
    return 1;
  }
  int64_t d = seconds_to_us(L, 2);
  if (d == INT64_MIN) return luaL_error(L, "Instant: result out of range");
  inst_push(L, add_us(L, a, -d));
  return 1;
}

static int m_micros(lua_State *L) {
  lua_pushinteger(L, inst_get(L, 1));
  return 1;
}

/* t:unix(): whole seconds, rounded down (also before 1970). */
static int m_unix(lua_State *L) {
  int64_t us = inst_get(L, 1), s = us / US_PER_SEC;
  if (us % US_PER_SEC < 0) s--;
  lua_pushinteger(L, s);
  return 1;
}

/* t:naive(): "YYYY-MM-DDTHH:MM:SS[.ffffff]" in UTC without a zone; this
 * exact form is used in signatures. */
static int m_naive(lua_State *L) {
  push_iso(L, inst_get(L, 1), "");
  return 1;
}

/* t:date_table(): like os.date("!*t") plus usec. */
static int m_date_table(lua_State *L) {
  Civil c;
  to_civil(inst_get(L, 1), &c);
  lua_createtable(L, 0, 10);
  lua_pushinteger(L, c.year);
  lua_setfield(L, -2, "year");
  lua_pushinteger(L, c.month);
  lua_setfield(L, -2, "month");
  lua_pushinteger(L, c.day);
  lua_setfield(L, -2, "day");
  lua_pushinteger(L, c.hour);
  lua_setfield(L, -2, "hour");
  lua_pushinteger(L, c.min);
  lua_setfield(L, -2, "min");
  lua_pushinteger(L, c.sec);
  lua_setfield(L, -2, "sec");
  lua_pushinteger(L, c.usec);
  lua_setfield(L, -2, "usec");
  lua_pushinteger(L, c.wday);
  lua_setfield(L, -2, "wday");
  lua_pushinteger(L, c.yday);
  lua_setfield(L, -2, "yday");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "isdst");
  return 1;
}

static const luaL_Reg inst_meta[] = {
  {"__eq", m_eq},
  {"__lt", m_lt},
  {"__le", m_le},
  {"__tostring", m_tostring},
  {"__add", m_add},
  {"__sub", m_sub},
  {NULL, NULL}
};

static const luaL_Reg inst_methods[] = {
  {"micros", m_micros},
  {"unix", m_unix},
  {"iso", m_tostring},
  {"naive", m_naive},
  {"date_table", m_date_table},
  {NULL, NULL}
};

static const luaL_Reg inst_funcs[] = {
  {"utcnow", l_utcnow},
  {"Instant", l_instant},
  {"instant_from_micros", l_from_micros},
  {"is_instant", l_is_instant},
  {"_instant_format_pg", l_format_pg},
  {NULL, NULL}
};

void inst_open(lua_State *L) {
  luaL_newmetatable(L, CARACAL_INSTANT_MT); /* sets __name too */
  luaL_setfuncs(L, inst_meta, 0);
  luaL_newlib(L, inst_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, inst_funcs, 0);
}
