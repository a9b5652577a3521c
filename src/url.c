/*
 * url.c: connection URLs (postgresql://...) turned into libpq keywords,
 * and the redaction of secrets from messages.
 *
 * Why parse URLs here instead of handing them to libpq: libpq quotes the
 * whole URL, password included, in several of its URI parse errors, and
 * the pool connects with expand_dbname = 0 (a database name is never
 * read as a connection string). So the URL is parsed here with libpq's
 * grammar and every error names the part that is wrong. The only URL
 * text ever quoted is a short fragment outside the userinfo (a port entry
 * or a query parameter name), and not even that when the URL looks like
 * it holds an unencoded password (see Parse.suspect) or when the message
 * would contain a known password (see fail_echo).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "internal.h"

#define URL_ERR_PREFIX "invalid connection URL: "
/* The longest fragment (port, option name) quoted in an error message. */
#define URL_ECHO_MAX 48

/* ---- small character helpers -------------------------------------------- */

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool is_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int ascii_lower(int c) {
  return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

/* Do the n bytes at s equal lit (lowercase ASCII), ignoring ASCII case?
 * s must hold n readable bytes or a NUL before them. */
static bool equal_ci(const char *s, const char *lit, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\0' || ascii_lower((unsigned char)s[i]) != lit[i]) return false;
  }
  return true;
}

/* ---- growable string ------------------------------------------------------ */

typedef struct Buf {
  char *s;
  size_t len, cap;
} Buf;

/* Append n bytes; the buffer stays NUL-terminated. 0, or -1 when out of
 * memory (the buffer keeps what it had). */
static int buf_add(Buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 32;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) return -1;
    b->s = p;
    b->cap = cap;
  }
  if (n) memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = '\0';
  return 0;
}

/* ---- parse state ---------------------------------------------------------- */

typedef struct Parse {
  UrlParam *params;
  int n, cap;
  char *err;
  size_t errlen;
  /* An '@' after the authority (host part) means the URL may hold a
   * password with an unencoded '/', '?' or '@' that was cut in the wrong
   * place: then no fragment of the URL is quoted in an error at all. */
  bool suspect;
  char *pw;                   /* decoded password from the userinfo, owned */
  PQconninfoOption *options;  /* libpq's keywords, fetched on first need */
} Parse;

/* Write "invalid connection URL: <message>" into err (bounded); returns -1
 * so callers can `return fail(...)`. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int fail(Parse *ps, const char *fmt, ...) {
  if (!ps->err || ps->errlen == 0) return -1;
  int n = snprintf(ps->err, ps->errlen, "%s", URL_ERR_PREFIX);
  if (n >= 0 && (size_t)n < ps->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int fail_oom(Parse *ps) {
  if (ps->err && ps->errlen) snprintf(ps->err, ps->errlen, "out of memory parsing connection URL");
  return -1;
}

static size_t match_password(const char *s, const char *pw, size_t pwlen);

/* Does s contain the password (raw or percent-encoded in any way)? */
static bool contains_secret(const char *s, const char *pw) {
  if (!pw || !*pw) return false;
  size_t pwlen = strlen(pw);
  for (; *s; s++) {
    if (match_password(s, pw, pwlen)) return true;
  }
  return false;
}

/* Does text contain a password this parse has seen (the URL's, or a
 * password= query parameter's)? */
static bool shows_secret(const Parse *ps, const char *text) {
  if (contains_secret(text, ps->pw)) return true;
  for (int i = 0; i < ps->n; i++) {
    if (strcmp(ps->params[i].key, "password") == 0 && contains_secret(text, ps->params[i].value)) return true;
  }
  return false;
}

/*
 * Fail with "<what> '<frag>'". The fragment is cut at URL_ECHO_MAX bytes
 * and anything unprintable shows as '?', so a message stays one short
 * line. It is left out when the URL is suspect, and when the finished
 * message would contain a known password anywhere: the check is on the
 * text as printed, so the quotes around the fragment count too.
 */
static int fail_echo(Parse *ps, const char *what, const char *frag) {
  if (ps->suspect) {
    return fail(ps, "%s (not shown: percent-encode any '@', '/' or '?' in the password)", what);
  }
  char shown[URL_ECHO_MAX + 4];
  size_t i = 0;
  for (; frag[i] && i < URL_ECHO_MAX; i++) {
    unsigned char c = (unsigned char)frag[i];
    shown[i] = (c < 0x20 || c >= 0x7f || c == '\'') ? '?' : (char)c;
  }
  if (frag[i]) {
    memcpy(shown + i, "...", 3);
    i += 3;
  }
  shown[i] = '\0';

  char message[sizeof URL_ERR_PREFIX + URL_ECHO_MAX + 128];
  snprintf(message, sizeof message, "%s%s '%s'", URL_ERR_PREFIX, what, shown);
  if (shows_secret(ps, message)) return fail(ps, "%s (not shown)", what);
  return fail(ps, "%s '%s'", what, shown);
}

/* ---- decoding and checks ---------------------------------------------------- */

/*
 * Decode the percent-escapes of s[0..n) into a new string (*out). '+'
 * stays '+' (libpq does not read it as a space); %00 is refused because a
 * C string cannot hold it (libpq refuses it too). Returns 0, -1 on a bad
 * escape, -2 when out of memory; *out is NULL on failure.
 */
static int pct_decode(const char *s, size_t n, char **out) {
  char *d = malloc(n + 1);
  *out = NULL;
  if (!d) return -2;
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      d[j++] = s[i];
      continue;
    }
    int hi = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
    int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
      free(d);
      return -1;
    }
    d[j++] = (char)(hi << 4 | lo);
    i += 2;
  }
  d[j] = '\0';
  *out = d;
  return 0;
}

/* Decode one URL part; on failure write the message naming `part` (never
 * its text) and return -1. */
static int decode_part(Parse *ps, const char *s, size_t n, const char *part, char **out) {
  int rc = pct_decode(s, n, out);
  if (rc == -2) return fail_oom(ps);
  if (rc == -1) return fail(ps, "bad percent-escape in %s", part);
  return 0;
}

/* Is s a port libpq accepts: empty (its default) or 1..65535 in decimal? */
static bool port_ok(const char *s) {
  if (!*s) return true;
  long v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    v = v * 10 + (*s - '0');
    if (v > 65535) return false;
  }
  return v >= 1;
}

/* Check every entry of a comma-separated port list (as libpq takes it). */
static int check_ports(Parse *ps, const char *list) {
  Buf one = {0};
  int rc = 0;
  for (const char *p = list;; p++) {
    size_t n = strcspn(p, ",");
    one.len = 0;
    if (buf_add(&one, p, n) != 0) {
      rc = fail_oom(ps);
      break;
    }
    if (!port_ok(one.s)) {
      rc = fail_echo(ps, "invalid port", one.s);
      break;
    }
    p += n;
    if (!*p) break;
  }
  free(one.s);
  return rc;
}

/*
 * Is key a connection keyword libpq knows? The list comes from
 * PQconndefaults(), once per parse; when that fails because of the
 * environment (a PGSERVICE naming no service) the bare list from
 * PQconninfoParse("") is used instead. 1 yes, 0 no, -1 out of memory.
 */
static int option_known(Parse *ps, const char *key) {
  if (!ps->options) ps->options = PQconndefaults();
  if (!ps->options) ps->options = PQconninfoParse("", NULL);
  if (!ps->options) return -1;
  for (const PQconninfoOption *o = ps->options; o->keyword; o++) {
    if (strcmp(o->keyword, key) == 0) return 1;
  }
  return 0;
}

/*
 * Set key to value. Both are malloc'ed and owned from here on, also on
 * failure. A key already present is replaced in place, so a query
 * parameter overrides the URL part of the same name (as in libpq) and
 * each keyword appears once.
 */
static int put(Parse *ps, char *key, char *value) {
  if (!key || !value) {
    free(key);
    free(value);
    return fail_oom(ps);
  }
  for (int i = 0; i < ps->n; i++) {
    if (strcmp(ps->params[i].key, key) == 0) {
      free(ps->params[i].value);
      ps->params[i].value = value;
      free(key);
      return 0;
    }
  }
  if (ps->n == ps->cap) {
    int cap = ps->cap ? ps->cap * 2 : 8;
    UrlParam *p = realloc(ps->params, (size_t)cap * sizeof *p);
    if (!p) {
      free(key);
      free(value);
      return fail_oom(ps);
    }
    ps->params = p;
    ps->cap = cap;
  }
  ps->params[ps->n].key = key;
  ps->params[ps->n].value = value;
  ps->n++;
  return 0;
}

/* put() for a fixed key name and a value that may be NULL (absent: the
 * key is left out). Takes ownership of value. */
static int put_part(Parse *ps, const char *key, char *value) {
  if (!value) return 0;
  return put(ps, strdup(key), value);
}

/* ---- the grammar ------------------------------------------------------------ */

/*
 * Parse hostspec [host][:port][,...] in s[0..n) into comma-joined decoded
 * lists, libpq's layout: once any port is given there is one port entry
 * per host (empty entries meaning the default). IPv6 hosts come in
 * brackets, which are dropped. *hosts is NULL when every host is empty
 * and no port list needs it to line up; *ports is NULL when no port is
 * given. Returns 0, or -1 with the message written and nothing allocated.
 */
static int parse_hosts(Parse *ps, const char *s, size_t n, char **hosts, char **ports) {
  Buf hb = {0}, pb = {0};
  bool any_host = false, any_port = false;
  int nhosts = 0, rc = -1;
  size_t i = 0;
  char *part = NULL;

  *hosts = *ports = NULL;
  for (;;) {
    const char *h;
    size_t hn;
    if (i < n && s[i] == '[') {
      const char *close = memchr(s + i + 1, ']', n - i - 1);
      if (!close) {
        fail(ps, "unterminated IPv6 host");
        goto out;
      }
      h = s + i + 1;
      hn = (size_t)(close - h);
      if (hn == 0) {
        fail(ps, "empty IPv6 host");
        goto out;
      }
      i = (size_t)(close - s) + 1;
      if (i < n && s[i] != ':' && s[i] != ',') {
        fail(ps, "unexpected character after IPv6 host");
        goto out;
      }
    } else {
      h = s + i;
      while (i < n && s[i] != ':' && s[i] != ',') i++;
      hn = (size_t)(s + i - h);
    }
    if (decode_part(ps, h, hn, "host", &part) != 0) goto out;
    if ((nhosts && buf_add(&hb, ",", 1) != 0) || buf_add(&hb, part, strlen(part)) != 0) {
      fail_oom(ps);
      goto out;
    }
    if (*part) any_host = true;
    free(part);
    part = NULL;

    const char *p = s + i;
    size_t pn = 0;
    if (i < n && s[i] == ':') {
      p = s + ++i;
      while (i < n && s[i] != ',') i++;
      pn = (size_t)(s + i - p);
    }
    if (decode_part(ps, p, pn, "port", &part) != 0) goto out;
    if (!port_ok(part)) {
      fail_echo(ps, "invalid port", part);
      goto out;
    }
    if ((nhosts && buf_add(&pb, ",", 1) != 0) || buf_add(&pb, part, strlen(part)) != 0) {
      fail_oom(ps);
      goto out;
    }
    if (*part) any_port = true;
    free(part);
    part = NULL;
    nhosts++;

    if (i < n && s[i] == ',') {
      i++;
      continue;
    }
    break;
  }

  /* ":5432,:5433" keeps its host list "," so libpq pairs two ports with
   * two (default) hosts; a lone empty host is simply left out. */
  if (any_host || (any_port && nhosts > 1)) {
    *hosts = hb.s;
    hb.s = NULL;
  }
  if (any_port) {
    *ports = pb.s;
    pb.s = NULL;
  }
  rc = 0;
out:
  free(part);
  free(hb.s);
  free(pb.s);
  return rc;
}

/*
 * Parse the query string q (after '?'): key=value pairs joined by '&',
 * each percent-decoded and checked against libpq's keywords. As in libpq a
 * pair needs exactly one raw '=' (encode others as %3D), and ssl=true
 * (JDBC's spelling) means sslmode=require. Returns 0 or -1.
 */
static int parse_query(Parse *ps, const char *q) {
  while (*q) {
    size_t seg = strcspn(q, "&");
    const char *eq = memchr(q, '=', seg);
    char *key = NULL, *value = NULL;

    if (!eq || memchr(eq + 1, '=', seg - (size_t)(eq + 1 - q))) {
      const char *what = eq ? "extra '=' in query parameter" : "missing '=' in query parameter";
      size_t kn = eq ? (size_t)(eq - q) : seg;
      int rc = pct_decode(q, kn, &key);
      if (rc == -2) return fail_oom(ps);
      if (rc == -1) return fail(ps, "%s", what);
      fail_echo(ps, what, key);
      free(key);
      return -1;
    }
    if (decode_part(ps, q, (size_t)(eq - q), "parameter name", &key) != 0) return -1;
    int rc = pct_decode(eq + 1, seg - (size_t)(eq + 1 - q), &value);
    if (rc != 0) {
      if (rc == -2) fail_oom(ps);
      else fail_echo(ps, "bad percent-escape in parameter", key);
      free(key);
      return -1;
    }
    if (strcmp(key, "ssl") == 0 && strcmp(value, "true") == 0) {
      free(key);
      free(value);
      key = strdup("sslmode");
      value = strdup("require");
      if (!key || !value) {
        free(key);
        free(value);
        return fail_oom(ps);
      }
    }
    int known = option_known(ps, key);
    if (known != 1) {
      if (known < 0) fail_oom(ps);
      else fail_echo(ps, "unknown connection option", key);
      free(key);
      free(value);
      return -1;
    }
    if (strcmp(key, "port") == 0 && check_ports(ps, value) != 0) {
      free(key);
      free(value);
      return -1;
    }
    if (put(ps, key, value) != 0) return -1;
    q += seg;
    if (*q == '&') q++;
  }
  return 0;
}

/* Length of the scheme prefix "postgresql://" or "postgres://" (any
 * case, as RFC 3986 has it), or 0. */
static size_t scheme_len(const char *url) {
  if (equal_ci(url, "postgresql://", 13)) return 13;
  if (equal_ci(url, "postgres://", 11)) return 11;
  return 0;
}

/*
 * Grammar (libpq's):
 *   postgresql://[user[:password]@][host][:port][,...][/dbname][?k=v&...]
 * The authority ends at the first '/' or '?'; the userinfo ends at the
 * last '@' inside it, so an unencoded '@' in a password still works (libpq
 * cuts at the first '@' and would then show the rest of the password as
 * a host name in its errors). The user name ends at the first ':'.
 */
int url_parse(const char *url, UrlParam **out, int *count, char *err, size_t errlen) {
  Parse ps = {.err = err, .errlen = errlen};
  char *user = NULL, *password = NULL, *hosts = NULL, *ports = NULL, *dbname = NULL;
  int rc = -1;

  *out = NULL;
  *count = 0;
  if (err && errlen) err[0] = '\0';

  size_t plen = url ? scheme_len(url) : 0;
  if (plen == 0) return fail(&ps, "expected postgresql:// or postgres://");

  const char *start = url + plen;
  const char *auth_end = start + strcspn(start, "/?");
  const char *at = NULL;
  for (const char *p = start; p < auth_end; p++) {
    if (*p == '@') at = p;
  }
  ps.suspect = strchr(auth_end, '@') != NULL;

  const char *hostspec = start;
  if (at) {
    const char *colon = memchr(start, ':', (size_t)(at - start));
    const char *uend = colon ? colon : at;
    if (decode_part(&ps, start, (size_t)(uend - start), "user name", &user) != 0) goto out;
    if (colon && decode_part(&ps, colon + 1, (size_t)(at - colon - 1), "password", &ps.pw) != 0) goto out;
    hostspec = at + 1;
  }
  if (parse_hosts(&ps, hostspec, (size_t)(auth_end - hostspec), &hosts, &ports) != 0) goto out;

  const char *p = auth_end;
  if (*p == '/') {
    const char *db = p + 1;
    p = db + strcspn(db, "?");
    if (decode_part(&ps, db, (size_t)(p - db), "database name", &dbname) != 0) goto out;
  }

  /* Empty parts are left out, as libpq does: an empty dbname would force
   * the user-name default instead of PGDATABASE. */
  if (user && !*user) {
    free(user);
    user = NULL;
  }
  if (dbname && !*dbname) {
    free(dbname);
    dbname = NULL;
  }
  if (ps.pw && *ps.pw && !(password = strdup(ps.pw))) {
    fail_oom(&ps);
    goto out;
  }
  /* put_part owns what it is given, even when it fails. */
  int prc = put_part(&ps, "host", hosts);
  hosts = NULL;
  if (prc == 0) {
    prc = put_part(&ps, "port", ports);
    ports = NULL;
  }
  if (prc == 0) {
    prc = put_part(&ps, "dbname", dbname);
    dbname = NULL;
  }
  if (prc == 0) {
    prc = put_part(&ps, "user", user);
    user = NULL;
  }
  if (prc == 0) {
    prc = put_part(&ps, "password", password);
    password = NULL;
  }
  if (prc != 0) goto out;

  if (*p == '?' && parse_query(&ps, p + 1) != 0) goto out;

  *out = ps.params;
  *count = ps.n;
  ps.params = NULL;
  ps.n = 0;
  rc = 0;
out:
  free(user);
  free(password);
  free(hosts);
  free(ports);
  free(dbname);
  free(ps.pw);
  if (ps.options) PQconninfoFree(ps.options);
  url_free(ps.params, ps.n);
  return rc;
}

void url_free(UrlParam *params, int count) {
  if (!params) return;
  for (int i = 0; i < count; i++) {
    free(params[i].key);
    free(params[i].value);
  }
  free(params);
}

/* ---- redaction ---------------------------------------------------------------- */

/*
 * Length of the password's occurrence starting at s (NUL-terminated),
 * either raw or with any of its bytes written as %XX in either case (so
 * the fully encoded form, a partly encoded one and mixed-case hex all
 * match); 0 when there is none. The raw form is tried first because the
 * greedy decoding would miss a raw "%25" in a password.
 */
static size_t match_password(const char *s, const char *pw, size_t pwlen) {
  if (strncmp(s, pw, pwlen) == 0) return pwlen;
  size_t j = 0;
  for (size_t k = 0; k < pwlen; k++) {
    unsigned char b = (unsigned char)pw[k];
    int hi, lo;
    if (s[j] == '%' && (hi = hexval((unsigned char)s[j + 1])) >= 0 &&
        (lo = hexval((unsigned char)s[j + 2])) >= 0 && (unsigned)(hi << 4 | lo) == b) {
      j += 3;
    } else if ((unsigned char)s[j] == b) {
      j++;
    } else {
      return 0;
    }
  }
  return j;
}

/*
 * When s[i] starts the VALUE of "<...>password = VALUE" (key compared
 * without case, blanks allowed around '='), the index just past that
 * value; else 0. Any key ending in "password" counts (sslpassword,
 * PGPASSWORD, db_password): hiding too much is the safe mistake. A value
 * in single quotes runs to the closing quote, with libpq's backslash
 * escapes; otherwise it runs to whitespace, '&' or the end.
 */
static size_t kv_secret_end(const char *s, size_t i) {
  if (s[i] == '\0' || s[i] == '&' || is_space((unsigned char)s[i])) return 0;
  size_t j = i;
  while (j > 0 && is_space((unsigned char)s[j - 1])) j--;
  if (j == 0 || s[j - 1] != '=') return 0;
  j--;
  while (j > 0 && is_space((unsigned char)s[j - 1])) j--;
  if (j < 8 || !equal_ci(s + j - 8, "password", 8)) return 0;

  size_t e = i;
  if (s[i] == '\'') {
    for (e = i + 1; s[e] && s[e] != '\''; e++) {
      if (s[e] == '\\' && s[e + 1]) e++;
    }
    if (s[e] == '\'') e++;
  } else {
    while (s[e] && s[e] != '&' && !is_space((unsigned char)s[e])) e++;
  }
  return e;
}

/*
 * When s[i] starts the SECRET of "scheme://user:SECRET@host", the index
 * of the '@' ending it (the last '@' before the next '/', '?', whitespace
 * or the end); else 0. s[i - 1] must be the first ':' after "://".
 */
static size_t url_secret_end(const char *s, size_t i) {
  if (i == 0 || s[i - 1] != ':') return 0;
  size_t j = i - 1; /* the ':' */
  while (j > 0 && s[j - 1] != ':' && s[j - 1] != '/' && s[j - 1] != '?' &&
         !is_space((unsigned char)s[j - 1])) {
    j--;
  }
  if (j < 3 || s[j - 1] != '/' || s[j - 2] != '/' || s[j - 3] != ':') return 0;
  size_t at = 0;
  for (size_t k = i; s[k] && s[k] != '/' && s[k] != '?' && !is_space((unsigned char)s[k]); k++) {
    if (s[k] == '@') at = k;
  }
  return at > i ? at : 0;
}

/*
 * Every byte of msg is either shown or hidden; each run of hidden bytes
 * becomes one "***". A byte is hidden when it lies in a secret that
 * starts at or before it: the password, a password=VALUE value, or a
 * URL's user:SECRET@. Secrets are found where they start, so a single
 * left-to-right pass with a "hidden until" mark needs no allocation.
 * Output is cut at outlen - 1 bytes; a hidden byte is never written.
 */
size_t caracal_redact(const char *msg, const char *password, char *out, size_t outlen) {
  if (!out || outlen == 0) return 0;
  if (!msg) msg = "";
  size_t pwlen = password ? strlen(password) : 0;
  size_t w = 0, hide_end = 0, room = outlen - 1;
  bool hiding = false;

  for (size_t i = 0; msg[i] && w < room; i++) {
    size_t e = 0, m;
    if (pwlen && (m = match_password(msg + i, password, pwlen)) != 0) e = i + m;
    if ((m = kv_secret_end(msg, i)) > e) e = m;
    if ((m = url_secret_end(msg, i)) > e) e = m;
    if (e > hide_end) hide_end = e;

    if (i < hide_end) {
      if (!hiding) {
        for (int k = 0; k < 3 && w < room; k++) out[w++] = '*';
        hiding = true;
      }
    } else {
      hiding = false;
      out[w++] = msg[i];
    }
  }
  out[w] = '\0';
  return w;
}
