/*
 * decimal.c: exact decimals, the Lua face of PostgreSQL's NUMERIC.
 *
 * A Decimal is an immutable userdata holding sign, scale (digits after
 * the point) and a coefficient of base-1e9 limbs stored inline, so the
 * value is coefficient * 10^-scale exactly. Nothing here goes through a
 * double: money and quantities must round-trip digit for digit.
 *
 * The scale is kept the way NUMERIC keeps its display scale: "1.000000"
 * stays "1.000000", + and - keep the larger scale, * adds the scales.
 * Zero is never negative, so "-0.00" prints "0.00".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define DEC_BASE 1000000000u  /* one limb holds nine decimal digits */
#define DEC_LIMB_DIGITS 9
#define DEC_MAX_SCALE 16383        /* NUMERIC's largest display scale */
#define DEC_MAX_INT_DIGITS 131072  /* NUMERIC's digits before the point */
#define DEC_RANGE_TEXT "NUMERIC allows 131072 digits before the point and 16383 after"
#define DEC_SHOW_MAX 64            /* bytes of a bad value quoted in messages */

typedef struct Decimal {
  int32_t scale; /* digits after the point, 0..DEC_MAX_SCALE */
  int32_t n;     /* limbs in use, no leading zero limb; 0 means zero */
  int neg;       /* 1 when negative; never set on zero */
  uint32_t d[];  /* coefficient, least significant limb first */
} Decimal;

static const uint32_t dec_pow10[DEC_LIMB_DIGITS + 1] = {
  1u, 10u, 100u, 1000u, 10000u, 100000u, 1000000u, 10000000u, 100000000u, 1000000000u
};

/* ---- limb arithmetic on magnitudes ------------------------------------- */

/* Limbs in use once leading zero limbs are dropped. */
static int mag_trim(const uint32_t *a, int n) {
  while (n > 0 && a[n - 1] == 0) n--;
  return n;
}

/* Compare two trimmed magnitudes: -1, 0 or 1. */
static int mag_cmp(const uint32_t *a, int na, const uint32_t *b, int nb) {
  if (na != nb) return na < nb ? -1 : 1;
  for (int i = na - 1; i >= 0; i--)
    if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

/* r = a + b; r has room for max(na, nb) + 1 limbs. Returns limbs used. */
static int mag_add(uint32_t *r, const uint32_t *a, int na, const uint32_t *b, int nb) {
  if (na < nb) {
    const uint32_t *t = a; a = b; b = t;
    int tn = na; na = nb; nb = tn;
  }
  uint32_t carry = 0;
  int i;
  for (i = 0; i < na; i++) {
    uint32_t s = a[i] + (i < nb ? b[i] : 0) + carry; /* < 2^31: no wrap */
    carry = s >= DEC_BASE;
    r[i] = carry ? s - DEC_BASE : s;
  }
  r[i] = carry;
  return mag_trim(r, na + 1);
}

/* r = a - b where a >= b; r has room for na limbs. Returns limbs used. */
static int mag_sub(uint32_t *r, const uint32_t *a, int na, const uint32_t *b, int nb) {
  uint32_t borrow = 0;
  for (int i = 0; i < na; i++) {
    uint32_t sub = (i < nb ? b[i] : 0) + borrow;
    borrow = a[i] < sub;
    r[i] = borrow ? a[i] + DEC_BASE - sub : a[i] - sub;
  }
  return mag_trim(r, na);
}

/* r = a * m + add with m, add < DEC_BASE; r has room for na + 1 limbs
 * (r may be a). Returns limbs used. */
static int mag_mul_small(uint32_t *r, const uint32_t *a, int na, uint32_t m, uint32_t add) {
  uint64_t carry = add;
  for (int i = 0; i < na; i++) {
    uint64_t p = (uint64_t)a[i] * m + carry;
    r[i] = (uint32_t)(p % DEC_BASE);
    carry = p / DEC_BASE;
  }
  r[na] = (uint32_t)carry;
  return mag_trim(r, na + 1);
}

/* r = a / m with 0 < m <= DEC_BASE (r may be a); returns the remainder.
 * The caller trims r. */
static uint32_t mag_div_small(uint32_t *r, const uint32_t *a, int na, uint32_t m) {
  uint64_t rem = 0;
  for (int i = na - 1; i >= 0; i--) {
    uint64_t cur = rem * DEC_BASE + a[i];
    r[i] = (uint32_t)(cur / m);
    rem = cur % m;
  }
  return (uint32_t)rem;
}

/* r = a * b; r has room for na + nb limbs and is not a or b. */
static int mag_mul(uint32_t *r, const uint32_t *a, int na, const uint32_t *b, int nb) {
  memset(r, 0, (size_t)(na + nb) * sizeof *r);
  for (int i = 0; i < na; i++) {
    uint64_t carry = 0;
    if (a[i] == 0) continue;
    for (int j = 0; j < nb; j++) {
      /* < 1e9 + (1e9-1)^2 + 1e9: fits in 64 bits */
      uint64_t t = r[i + j] + (uint64_t)a[i] * b[j] + carry;
      r[i + j] = (uint32_t)(t % DEC_BASE);
      carry = t / DEC_BASE;
    }
    for (int k = i + nb; carry != 0; k++) {
      uint64_t t = r[k] + carry;
      r[k] = (uint32_t)(t % DEC_BASE);
      carry = t / DEC_BASE;
    }
  }
  return mag_trim(r, na + nb);
}

/*
 * q = u / v, truncated (Knuth's algorithm D in base 1e9). u and v are
 * trimmed, nv >= 1; q has room for nu - nv + 1 limbs; work has room for
 * nu + nv + 2 limbs. Returns limbs used in q.
 */
static int mag_div(uint32_t *q, const uint32_t *u, int nu, const uint32_t *v, int nv,
                   uint32_t *work) {
  if (nu < nv) return 0;
  if (nv == 1) {
    mag_div_small(q, u, nu, v[0]);
    return mag_trim(q, nu);
  }
  /* Scale both so the divisor's top limb is at least DEC_BASE/2; then the
   * quotient digit guessed from the top limbs is at most 2 too large. */
  uint32_t norm = DEC_BASE / (v[nv - 1] + 1);
  uint32_t *un = work, *vn = work + nu + 1;
  mag_mul_small(un, u, nu, norm, 0);        /* writes un[nu] too */
  mag_mul_small(vn, v, nv, norm, 0);        /* carry out is zero */
  for (int j = nu - nv; j >= 0; j--) {
    uint64_t num = (uint64_t)un[j + nv] * DEC_BASE + un[j + nv - 1];
    uint64_t qhat = num / vn[nv - 1], rhat = num % vn[nv - 1];
    while (qhat >= DEC_BASE || qhat * vn[nv - 2] > rhat * DEC_BASE + un[j + nv - 2]) {
      qhat--;
      rhat += vn[nv - 1];
      if (rhat >= DEC_BASE) break;
    }
    /* un[j .. j+nv] -= qhat * vn */
    uint64_t carry = 0;
    int64_t borrow = 0;
    for (int i = 0; i < nv; i++) {
      uint64_t p = qhat * vn[i] + carry;
      carry = p / DEC_BASE;
      int64_t t = (int64_t)un[i + j] - (int64_t)(p % DEC_BASE) - borrow;
      borrow = t < 0;
      un[i + j] = (uint32_t)(borrow ? t + DEC_BASE : t);
    }
    int64_t top = (int64_t)un[j + nv] - (int64_t)carry - borrow;
    if (top < 0) { /* qhat was one too large: add the divisor back */
      uint32_t c = 0;
      qhat--;
      for (int i = 0; i < nv; i++) {
        uint32_t s = un[i + j] + vn[i] + c;
        c = s >= DEC_BASE;
        un[i + j] = c ? s - DEC_BASE : s;
      }
      top += c;
    }
    un[j + nv] = (uint32_t)top;
    q[j] = (uint32_t)qhat;
  }
  return mag_trim(q, nu - nv + 1);
}

/* Decimal digits in a trimmed magnitude (0 for zero). */
static int64_t mag_ndigits(const uint32_t *a, int n) {
  if (n == 0) return 0;
  int top = 1;
  while (top < DEC_LIMB_DIGITS && a[n - 1] >= dec_pow10[top]) top++;
  return (int64_t)(n - 1) * DEC_LIMB_DIGITS + top;
}

/* The decimal digit at position pos (0 = units of the coefficient). */
static int mag_digit(const uint32_t *a, int n, int64_t pos) {
  int64_t limb = pos / DEC_LIMB_DIGITS;
  if (limb >= n) return 0;
  return (int)(a[limb] / dec_pow10[pos % DEC_LIMB_DIGITS] % 10);
}

/* ---- Decimal userdata ---------------------------------------------------- */

/* Push a new Decimal with room for n limbs (value zero, scale 0). */
static Decimal *dec_alloc(lua_State *L, int64_t n) {
  /* NUMERIC's limits bound every legal value well below this. */
  if (n > (DEC_MAX_INT_DIGITS + DEC_MAX_SCALE) / DEC_LIMB_DIGITS * 2 + 8)
    luaL_error(L, "Decimal: result out of range (" DEC_RANGE_TEXT ")");
  Decimal *x = lua_newuserdatauv(L, offsetof(Decimal, d) + (size_t)n * sizeof(uint32_t), 0);
  x->scale = 0;
  x->n = 0;
  x->neg = 0;
  luaL_setmetatable(L, CARACAL_DECIMAL_MT);
  return x;
}

/* Does x fit NUMERIC's limits? */
static int dec_in_range(const Decimal *x) {
  return x->scale <= DEC_MAX_SCALE &&
         mag_ndigits(x->d, x->n) - x->scale <= DEC_MAX_INT_DIGITS;
}

/* Finish a computed result: zero is positive; raise beyond NUMERIC. */
static void dec_finish(lua_State *L, Decimal *x) {
  if (x->n == 0) x->neg = 0;
  if (!dec_in_range(x))
    luaL_error(L, "Decimal: result out of range (" DEC_RANGE_TEXT ")");
}

/* Push a copy of a whose coefficient is multiplied by 10^k so that its
 * scale becomes a->scale + k (same value, more digits). */
static Decimal *dec_push_rescaled(lua_State *L, const Decimal *a, int64_t k) {
  int64_t shift = k / DEC_LIMB_DIGITS;
  Decimal *r = dec_alloc(L, a->n + shift + 1);
  r->neg = a->neg;
  r->scale = (int32_t)(a->scale + k);
  if (a->n > 0) {
    memset(r->d, 0, (size_t)shift * sizeof *r->d);
    r->n = (int)shift + mag_mul_small(r->d + shift, a->d, a->n,
                                      dec_pow10[k % DEC_LIMB_DIGITS], 0);
  }
  return r;
}

/*
 * Push a with its last k >= 1 digits dropped, rounding half away from
 * zero (PostgreSQL's rule for NUMERIC); the scale drops by k.
 */
static Decimal *dec_push_dropped(lua_State *L, const Decimal *a, int64_t k) {
  Decimal *r = dec_alloc(L, a->n + 1);
  int64_t skip = (k - 1) / DEC_LIMB_DIGITS; /* whole limbs below the kept part */
  r->neg = a->neg;
  r->scale = (int32_t)(a->scale - k);
  if (skip < a->n) {
    int m = a->n - (int)skip;
    memcpy(r->d, a->d + skip, (size_t)m * sizeof *r->d);
    mag_div_small(r->d, r->d, m, dec_pow10[(k - 1) % DEC_LIMB_DIGITS]);
    uint32_t last = mag_div_small(r->d, r->d, m, 10); /* first dropped digit */
    m = mag_trim(r->d, m);
    r->n = last >= 5 ? mag_mul_small(r->d, r->d, m, 1, 1) : m;
  }
  dec_finish(L, r);
  return r;
}

/* Quote at most DEC_SHOW_MAX bytes of s for an error message (pushed). */
static const char *dec_show(lua_State *L, const char *s, size_t len) {
  if (len <= DEC_SHOW_MAX) return lua_pushlstring(L, s, len);
  lua_pushlstring(L, s, DEC_SHOW_MAX);
  lua_pushliteral(L, "...");
  lua_concat(L, 2);
  return lua_tostring(L, -1);
}

/*
 * Parse text into a new Decimal on the stack. Grammar: [+-] digits
 * [. digits] [(e|E) [+-] digits], with digits on at least one side of
 * the point; nothing around it (no spaces, no NaN or Infinity).
 * Returns 0 (pushed), -1 when malformed, -2 beyond NUMERIC's limits
 * (nothing pushed on error).
 */
static int dec_parse(lua_State *L, const char *s, size_t len) {
  size_t i = 0;
  int neg = 0;
  if (i < len && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  size_t int_at = i;
  while (i < len && s[i] >= '0' && s[i] <= '9') i++;
  size_t ni = i - int_at, frac_at = i, nf = 0;
  if (i < len && s[i] == '.') {
    frac_at = ++i;
    while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    nf = i - frac_at;
  }
  if (ni + nf == 0) return -1;
  int64_t exp = 0;
  if (i < len && (s[i] == 'e' || s[i] == 'E')) {
    int eneg = 0;
    i++;
    if (i < len && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
    if (i >= len || s[i] < '0' || s[i] > '9') return -1;
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
      if (exp < 1000000000) exp = exp * 10 + (s[i] - '0'); /* saturate */
    if (eneg) exp = -exp;
  }
  if (i != len) return -1;
  if (ni + nf > (size_t)(DEC_MAX_INT_DIGITS + DEC_MAX_SCALE) * 4) return -2;

  /* The digits (integer then fraction) as one coefficient; leading zeros
   * carry no value. */
  int64_t total = (int64_t)(ni + nf), lead = 0;
#define DIGIT_AT(k) ((k) < (int64_t)ni ? s[int_at + (k)] : s[frac_at + (k) - (int64_t)ni])
  while (lead < total && DIGIT_AT(lead) == '0') lead++;
  int64_t sig = total - lead;
  int64_t scale = (int64_t)nf - exp, zeros = 0;
  if (scale < 0) { /* "12e3": append zeros instead of a negative scale */
    zeros = sig > 0 ? -scale : 0;
    scale = 0;
  }
  if (scale > DEC_MAX_SCALE || sig + zeros - scale > DEC_MAX_INT_DIGITS) return -2;

  int64_t nd = sig + zeros;
  Decimal *x = dec_alloc(L, (nd + DEC_LIMB_DIGITS - 1) / DEC_LIMB_DIGITS);
  x->scale = (int32_t)scale;
  x->n = (int)((nd + DEC_LIMB_DIGITS - 1) / DEC_LIMB_DIGITS);
  memset(x->d, 0, (size_t)x->n * sizeof *x->d);
  for (int64_t pos = zeros; pos < nd; pos++) {
    int dig = DIGIT_AT(total - 1 - (pos - zeros)) - '0';
    x->d[pos / DEC_LIMB_DIGITS] += (uint32_t)dig * dec_pow10[pos % DEC_LIMB_DIGITS];
  }
#undef DIGIT_AT
  x->neg = neg && x->n > 0;
  return 0;
}

/* Push a Decimal equal to the Lua integer v (scale 0). */
static Decimal *dec_push_int(lua_State *L, lua_Integer v) {
  /* The magnitude as unsigned, so the most negative integer works too. */
  uint64_t mag = v < 0 ? 0u - (uint64_t)v : (uint64_t)v;
  Decimal *x = dec_alloc(L, 3);
  while (mag > 0) {
    x->d[x->n++] = (uint32_t)(mag % DEC_BASE);
    mag /= DEC_BASE;
  }
  x->neg = v < 0;
  return x;
}

/* Raise the error for a float where an exact value was needed. */
static int dec_float_error(lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  const char *f = luaL_tolstring(L, -1, NULL);
  return luaL_error(L, "Decimal: got the float %s, which is not exact; pass a string (\"%s\") or a Decimal",
                    f, f);
}

/*
 * The operand at idx as a Decimal: a Decimal as it is, an integer or a
 * decimal string converted (the conversion is pushed and stays on the
 * stack, which keeps it alive). Floats and other types raise.
 */
static const Decimal *dec_operand(lua_State *L, int idx) {
  const Decimal *x = luaL_testudata(L, idx, CARACAL_DECIMAL_MT);
  if (x) return x;
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return dec_push_int(L, lua_tointeger(L, idx));
      dec_float_error(L, idx);
      return NULL;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      dec_push_string(L, s, len);
      return lua_touserdata(L, -1);
    }
    default:
      luaL_error(L, "Decimal: expected a Decimal, an integer or a decimal string, got %s",
                 luaL_typename(L, idx));
      return NULL;
  }
}

static Decimal *dec_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, CARACAL_DECIMAL_MT);
}

/* Push the exact text of x (no exponent, the scale kept). */
static const char *dec_push_tostring(lua_State *L, const Decimal *x) {
  int64_t nd = mag_ndigits(x->d, x->n);
  int64_t intd = nd > x->scale ? nd - x->scale : 0; /* digits before the point */
  size_t size = (size_t)(x->neg + (intd ? intd : 1) + (x->scale ? 1 + x->scale : 0));
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, size), *out = p;
  if (x->neg) *p++ = '-';
  if (intd == 0) *p++ = '0';
  /* Digits from the most significant; positions >= nd are leading zeros
   * of the fraction. */
  for (int64_t pos = (intd ? nd : x->scale) - 1; pos >= 0; pos--) {
    if (pos == x->scale - 1) *p++ = '.';
    *p++ = (char)('0' + mag_digit(x->d, x->n, pos));
  }
  luaL_pushresultsize(&b, (size_t)(p - out));
  return lua_tostring(L, -1);
}

/* Sign of x: -1, 0 or 1. */
static int dec_sign(const Decimal *x) {
  return x->n == 0 ? 0 : x->neg ? -1 : 1;
}

/* Compare values (not representations): -1, 0 or 1. May push a temporary. */
static int dec_compare(lua_State *L, const Decimal *a, const Decimal *b) {
  int sa = dec_sign(a), sb = dec_sign(b);
  if (sa != sb) return sa < sb ? -1 : 1;
  if (sa == 0) return 0;
  if (a->scale < b->scale) a = dec_push_rescaled(L, a, b->scale - a->scale);
  else if (b->scale < a->scale) b = dec_push_rescaled(L, b, a->scale - b->scale);
  int c = mag_cmp(a->d, a->n, b->d, b->n);
  return sa < 0 ? -c : c;
}

/* Push a + b (or a - b when negate_b); the scale is the larger one. */
static Decimal *dec_push_addsub(lua_State *L, const Decimal *a, const Decimal *b, int negate_b) {
  int bneg = b->neg ^ negate_b;
  if (a->scale < b->scale) a = dec_push_rescaled(L, a, b->scale - a->scale);
  else if (b->scale < a->scale) b = dec_push_rescaled(L, b, a->scale - b->scale);
  Decimal *r = dec_alloc(L, (a->n > b->n ? a->n : b->n) + 1);
  r->scale = a->scale;
  if (a->neg == bneg) {
    r->n = mag_add(r->d, a->d, a->n, b->d, b->n);
    r->neg = a->neg;
  } else if (mag_cmp(a->d, a->n, b->d, b->n) >= 0) {
    r->n = mag_sub(r->d, a->d, a->n, b->d, b->n);
    r->neg = a->neg;
  } else {
    r->n = mag_sub(r->d, b->d, b->n, a->d, a->n);
    r->neg = bneg;
  }
  dec_finish(L, r);
  return r;
}

/* ---- C API -------------------------------------------------------------- */

void dec_push_string(lua_State *L, const char *s, size_t len) {
  int rc = dec_parse(L, s, len);
  if (rc == 0) return;
  const char *shown = dec_show(L, s, len);
  if (rc == -2)
    luaL_error(L, "Decimal: '%s' is out of range (" DEC_RANGE_TEXT ")", shown);
  luaL_error(L, "Decimal: invalid decimal '%s'", shown);
}

/* The four decimal digits of a base-10000 digit g (0..9999). */
static void pg_group(int g, char grp[4]) {
  for (int k = 3; k >= 0; k--, g /= 10) grp[k] = (char)('0' + g % 10);
}

/*
 * PostgreSQL's binary NUMERIC: int16 ndigits, int16 weight, uint16 sign,
 * uint16 dscale, then ndigits base-10000 digits, all big-endian. Digit i
 * is worth 10000^(weight - i). The value is rebuilt as text with exactly
 * dscale fraction digits and parsed, which keeps one parser for both wire
 * formats. Digits beyond dscale must be zero (PostgreSQL rounds to it).
 */
int dec_push_pgbinary(lua_State *L, const char *buf, int len) {
  const unsigned char *u = (const unsigned char *)buf;
  if (len < 8) return -1;
  int ndigits = (int16_t)(u[0] << 8 | u[1]);
  int weight = (int16_t)(u[2] << 8 | u[3]);
  unsigned sign = (unsigned)(u[4] << 8 | u[5]);
  unsigned dscale = (unsigned)(u[6] << 8 | u[7]);
  if (ndigits < 0 || len != 8 + 2 * ndigits) return -1;
  if (sign != 0x0000 && sign != 0x4000) return -1; /* NaN, +-Infinity, junk */
  if (dscale > DEC_MAX_SCALE) return -1;
  for (int i = 0; i < ndigits; i++)
    if ((u[8 + 2 * i] << 8 | u[9 + 2 * i]) > 9999) return -1;
#define PG_DIGIT(i) ((i) >= 0 && (i) < ndigits ? (u[8 + 2 * (i)] << 8 | u[9 + 2 * (i)]) : 0)

  /* Fraction groups needed for dscale digits; any digit group past them
   * must be zero. */
  int fgroups = ((int)dscale + 3) / 4;
  for (int i = weight + 1 + fgroups; i < ndigits; i++)
    if (i >= 0 && PG_DIGIT(i) != 0) return -1;

  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (sign == 0x4000) luaL_addchar(&b, '-');
  if (weight < 0) luaL_addchar(&b, '0');
  for (int w = weight; w >= 0; w--) {
    char grp[4];
    pg_group(PG_DIGIT(weight - w), grp);
    luaL_addlstring(&b, grp, 4);
  }
  if (dscale > 0) {
    luaL_addchar(&b, '.');
    for (int w = -1, left = (int)dscale; left > 0; w--, left -= 4) {
      char grp[4];
      pg_group(PG_DIGIT(weight - w), grp);
      if (left < 4) /* the dropped tail of the last group must be zero */
        for (int k = left; k < 4; k++)
          if (grp[k] != '0') {
            luaL_pushresult(&b);
            lua_pop(L, 1);
            return -1;
          }
      luaL_addlstring(&b, grp, left < 4 ? (size_t)left : 4);
    }
  }
#undef PG_DIGIT
  luaL_pushresult(&b);
  size_t tlen;
  const char *text = lua_tolstring(L, -1, &tlen);
  int rc = dec_parse(L, text, tlen);
  lua_remove(L, rc == 0 ? -2 : -1); /* the text */
  return rc == 0 ? 0 : -1;
}

bool dec_is(lua_State *L, int idx) {
  return luaL_testudata(L, idx, CARACAL_DECIMAL_MT) != NULL;
}

const char *dec_push_text(lua_State *L, int idx, size_t *len) {
  const Decimal *x = dec_check(L, idx);
  dec_push_tostring(L, x);
  return lua_tolstring(L, -1, len);
}

/*
 * Would NUMERIC(precision, scale) store the value unchanged? PostgreSQL
 * rounds extra fraction digits away silently; we refuse when that would
 * change the value (a non-zero digit beyond scale), and when the integer
 * part has more than precision - scale digits (PostgreSQL's overflow).
 * Trailing fraction zeros do not count: 1.50000 fits NUMERIC(5,2).
 */
int dec_fits(lua_State *L, int idx, int precision, int scale, char *why, size_t whylen) {
  const Decimal *x = dec_check(L, idx);
  if (precision < 1 || scale < 0 || scale > precision) {
    snprintf(why, whylen, "NUMERIC(%d,%d) is not a valid type", precision, scale);
    return 0;
  }
  int64_t nd = mag_ndigits(x->d, x->n);
  int64_t tz = 0; /* trailing zero digits of the fraction */
  while (tz < x->scale && tz < nd && mag_digit(x->d, x->n, tz) == 0) tz++;
  int64_t places = x->n == 0 ? 0 : x->scale - tz;
  int64_t intd = nd > x->scale ? nd - x->scale : 0;
  if (places > scale) {
    snprintf(why, whylen, "has %lld decimal place%s, NUMERIC(%d,%d) allows %d",
             (long long)places, places == 1 ? "" : "s", precision, scale, scale);
    return 0;
  }
  if (intd > precision - scale) {
    snprintf(why, whylen, "has %lld digit%s before the point, NUMERIC(%d,%d) allows %d",
             (long long)intd, intd == 1 ? "" : "s", precision, scale, precision - scale);
    return 0;
  }
  if (whylen > 0) why[0] = '\0';
  return 1;
}

/* ---- Lua functions ------------------------------------------------------ */

/* Decimal(x): x a decimal string, an integer or a Decimal (returned as is:
 * Decimals are immutable). Floats raise: they are not exact. */
static int l_decimal(lua_State *L) {
  switch (lua_type(L, 1)) {
    case LUA_TUSERDATA:
      dec_check(L, 1);
      lua_settop(L, 1);
      return 1;
    case LUA_TNUMBER:
      if (!lua_isinteger(L, 1)) return dec_float_error(L, 1);
      dec_push_int(L, lua_tointeger(L, 1));
      return 1;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, 1, &len);
      dec_push_string(L, s, len);
      return 1;
    }
    default:
      return luaL_typeerror(L, 1, "decimal string, integer or Decimal");
  }
}

static int l_is_decimal(lua_State *L) {
  lua_pushboolean(L, dec_is(L, 1));
  return 1;
}

/* core._decimal_from_pgbinary(bytes) -> Decimal or nil: dec_push_pgbinary
 * for the unit specs (the wire decoder itself lives in result.c). */
static int l_from_pgbinary(lua_State *L) {
  size_t len;
  const char *buf = luaL_checklstring(L, 1, &len);
  if (len > INT32_MAX || dec_push_pgbinary(L, buf, (int)len) != 0) lua_pushnil(L);
  return 1;
}

static int m_add(lua_State *L) {
  const Decimal *a = dec_operand(L, 1), *b = dec_operand(L, 2);
  dec_push_addsub(L, a, b, 0);
  return 1;
}

static int m_sub(lua_State *L) {
  const Decimal *a = dec_operand(L, 1), *b = dec_operand(L, 2);
  dec_push_addsub(L, a, b, 1);
  return 1;
}

static int m_mul(lua_State *L) {
  const Decimal *a = dec_operand(L, 1), *b = dec_operand(L, 2);
  Decimal *r = dec_alloc(L, (int64_t)a->n + b->n);
  r->n = mag_mul(r->d, a->d, a->n, b->d, b->n);
  r->neg = a->neg ^ b->neg;
  if ((int64_t)a->scale + b->scale > DEC_MAX_SCALE)
    return luaL_error(L, "Decimal: result out of range (" DEC_RANGE_TEXT ")");
  r->scale = a->scale + b->scale;
  dec_finish(L, r);
  return 1;
}

/* '/' cannot be exact in general; the caller must choose a scale. */
static int m_div(lua_State *L) {
  return luaL_error(L, "Decimal: '/' is not exact; use d:div(other, scale)");
}

static int m_unm(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  Decimal *r = dec_alloc(L, a->n);
  memcpy(r->d, a->d, (size_t)a->n * sizeof *r->d);
  r->n = a->n;
  r->scale = a->scale;
  r->neg = a->n > 0 && !a->neg;
  return 1;
}

/* Lua calls __eq only for two userdata, which may be of another type. */
static int m_eq(lua_State *L) {
  const Decimal *a = luaL_testudata(L, 1, CARACAL_DECIMAL_MT);
  const Decimal *b = luaL_testudata(L, 2, CARACAL_DECIMAL_MT);
  lua_pushboolean(L, a && b && dec_compare(L, a, b) == 0);
  return 1;
}

static int m_lt(lua_State *L) {
  const Decimal *a = dec_operand(L, 1), *b = dec_operand(L, 2);
  lua_pushboolean(L, dec_compare(L, a, b) < 0);
  return 1;
}

static int m_le(lua_State *L) {
  const Decimal *a = dec_operand(L, 1), *b = dec_operand(L, 2);
  lua_pushboolean(L, dec_compare(L, a, b) <= 0);
  return 1;
}

static int m_tostring(lua_State *L) {
  dec_push_tostring(L, dec_check(L, 1));
  return 1;
}

/* "x = " .. d and d .. " EUR": a Decimal concatenates as its exact text. */
static int m_concat(lua_State *L) {
  for (int i = 1; i <= 2; i++) {
    const Decimal *x = luaL_testudata(L, i, CARACAL_DECIMAL_MT);
    if (x) dec_push_tostring(L, x);
    else if (lua_type(L, i) == LUA_TSTRING || lua_type(L, i) == LUA_TNUMBER)
      luaL_tolstring(L, i, NULL);
    else
      return luaL_error(L, "attempt to concatenate a %s value", luaL_typename(L, i));
  }
  lua_concat(L, 2);
  return 1;
}

/* d:round(scale): half away from zero; a larger scale pads with zeros. */
static int m_round(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  lua_Integer s = luaL_checkinteger(L, 2);
  luaL_argcheck(L, s >= 0 && s <= DEC_MAX_SCALE, 2, "scale must be 0..16383");
  if (s >= a->scale) dec_push_rescaled(L, a, s - a->scale);
  else dec_push_dropped(L, a, a->scale - s);
  return 1;
}

static int m_scale(lua_State *L) {
  lua_pushinteger(L, dec_check(L, 1)->scale);
  return 1;
}

/* d:precision(): digits NUMERIC needs, those before the point (none for
 * |d| < 1) plus the scale; at least 1. */
static int m_precision(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  int64_t nd = mag_ndigits(a->d, a->n);
  int64_t p = (nd > a->scale ? nd - a->scale : 0) + a->scale;
  lua_pushinteger(L, p > 0 ? p : 1);
  return 1;
}

static int m_is_zero(lua_State *L) {
  lua_pushboolean(L, dec_check(L, 1)->n == 0);
  return 1;
}

static int m_sign(lua_State *L) {
  lua_pushinteger(L, dec_sign(dec_check(L, 1)));
  return 1;
}

/* d:tonumber(): the nearest float, explicitly lossy. */
static int m_tonumber(lua_State *L) {
  const char *text = dec_push_tostring(L, dec_check(L, 1));
  if (lua_stringtonumber(L, text) == 0) return luaL_error(L, "Decimal: cannot convert to a number");
  lua_pushnumber(L, lua_tonumber(L, -1));
  return 1;
}

/* d:tointeger(): the integer when d is whole and fits 64 bits, else nil. */
static int m_tointeger(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  int64_t nd = mag_ndigits(a->d, a->n);
  for (int64_t pos = 0; pos < a->scale && pos < nd; pos++)
    if (mag_digit(a->d, a->n, pos) != 0) goto none;
  if (nd - a->scale > 19) goto none;
  uint64_t mag = 0;
  for (int64_t pos = nd - 1; pos >= a->scale; pos--)
    mag = mag * 10 + (uint64_t)mag_digit(a->d, a->n, pos);
  if (mag > (uint64_t)INT64_MAX + (uint64_t)a->neg) goto none;
  /* Negate in unsigned arithmetic so INT64_MIN needs no signed overflow. */
  lua_pushinteger(L, (lua_Integer)(a->neg ? 0u - mag : mag));
  return 1;
none:
  lua_pushnil(L);
  return 1;
}

/*
 * d:div(other, scale): d / other rounded half away from zero to scale.
 * With a = ca/10^sa and b = cb/10^sb, the digits wanted (one extra for
 * rounding) are ca * 10^(sb + scale + 1 - sa) / cb, truncated.
 */
static int m_divide(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  const Decimal *b = dec_operand(L, 2);
  lua_Integer s = luaL_checkinteger(L, 3);
  luaL_argcheck(L, s >= 0 && s <= DEC_MAX_SCALE, 3, "scale must be 0..16383");
  if (b->n == 0) return luaL_error(L, "Decimal: division by zero");
  int64_t e = (int64_t)b->scale + s + 1 - a->scale;
  const Decimal *num = a, *den = b;
  if (e > 0) num = dec_push_rescaled(L, a, e);
  else if (e < 0) den = dec_push_rescaled(L, b, -e);
  uint32_t *work = lua_newuserdatauv(L, (size_t)(num->n + den->n + 2) * sizeof(uint32_t), 0);
  Decimal *q = dec_alloc(L, num->n >= den->n ? num->n - den->n + 1 : 1);
  q->n = mag_div(q->d, num->d, num->n, den->d, den->n, work);
  q->scale = (int32_t)(s + 1);
  q->neg = a->neg ^ b->neg;
  dec_push_dropped(L, q, 1);
  return 1;
}

static int m_abs(lua_State *L) {
  const Decimal *a = dec_check(L, 1);
  if (!a->neg) {
    lua_settop(L, 1);
    return 1;
  }
  Decimal *r = dec_alloc(L, a->n);
  memcpy(r->d, a->d, (size_t)a->n * sizeof *r->d);
  r->n = a->n;
  r->scale = a->scale;
  return 1;
}

/* d:fits(precision, scale) -> true, or false and the reason. */
static int m_fits(lua_State *L) {
  dec_check(L, 1);
  lua_Integer p = luaL_checkinteger(L, 2), s = luaL_checkinteger(L, 3);
  luaL_argcheck(L, p >= 1 && p <= 1000, 2, "precision must be 1..1000");
  luaL_argcheck(L, s >= 0 && s <= p, 3, "scale must be 0..precision");
  char why[128];
  if (dec_fits(L, 1, (int)p, (int)s, why, sizeof why)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushstring(L, why);
  return 2;
}

static const luaL_Reg dec_meta[] = {
  {"__add", m_add},
  {"__sub", m_sub},
  {"__mul", m_mul},
  {"__div", m_div},
  {"__unm", m_unm},
  {"__eq", m_eq},
  {"__lt", m_lt},
  {"__le", m_le},
  {"__tostring", m_tostring},
  {"__concat", m_concat},
  {NULL, NULL}
};

static const luaL_Reg dec_methods[] = {
  {"round", m_round},
  {"scale", m_scale},
  {"precision", m_precision},
  {"is_zero", m_is_zero},
  {"sign", m_sign},
  {"tonumber", m_tonumber},
  {"tointeger", m_tointeger},
  {"div", m_divide},
  {"abs", m_abs},
  {"fits", m_fits},
  {NULL, NULL}
};

static const luaL_Reg dec_funcs[] = {
  {"Decimal", l_decimal},
  {"is_decimal", l_is_decimal},
  {"_decimal_from_pgbinary", l_from_pgbinary},
  {NULL, NULL}
};

void dec_open(lua_State *L) {
  luaL_newmetatable(L, CARACAL_DECIMAL_MT); /* sets __name too */
  luaL_setfuncs(L, dec_meta, 0);
  luaL_newlib(L, dec_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_setfuncs(L, dec_funcs, 0);
}
