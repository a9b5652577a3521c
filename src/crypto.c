/*
 * crypto.c: SHA-256, ECDSA P-256 keys and signatures, and Merkle trees
 * for the authority ledger, on OpenSSL 3's EVP API (no deprecated EC_KEY).
 *
 * Formats are the original Caracal Core's (shared/spec/domain.md): private
 * keys PEM PKCS#8 ("BEGIN PRIVATE KEY"), public keys PEM
 * SubjectPublicKeyInfo ("BEGIN PUBLIC KEY"), signatures DER as lowercase
 * hex, ECDSA with SHA-256 over the message given (EVP_DigestSign).
 *
 * Resources: every OpenSSL object of a call lives in a scratch userdata
 * marked to-be-closed, so a Lua error anywhere (a bad argument, out of
 * memory in lua_pushlstring) frees it; __gc is the fallback. The error
 * queue is cleared before returning, because libpq's TLS code reads the
 * same per-thread queue.
 *
 * Secrets: no message ever contains key material; private-key PEM we
 * produce is written through a secure-memory BIO and cleansed on free.
 *
 * Per-state context (the fetched SHA-256 and a reusable digest context)
 * is an upvalue of these functions, never a C global.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "internal.h"

#define CRYPTO_CTX_MT "caracal.CryptoContext"
#define CRYPTO_SCRATCH_MT "caracal.CryptoScratch"
#define HASH_LEN 32

static const char hexdigits[] = "0123456789abcdef";

/* ---- per-state context ------------------------------------------------- */

typedef struct CryptoCtx {
  EVP_MD *sha256;
  EVP_MD_CTX *md;
} CryptoCtx;

static int ctx_gc(lua_State *L) {
  CryptoCtx *c = luaL_checkudata(L, 1, CRYPTO_CTX_MT);
  EVP_MD_CTX_free(c->md);
  EVP_MD_free(c->sha256);
  c->md = NULL;
  c->sha256 = NULL;
  return 0;
}

static CryptoCtx *get_ctx(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* SHA-256 of data into out; -1 only when OpenSSL itself fails. */
static int crypto_sha256(CryptoCtx *c, const void *data, size_t len, unsigned char out[HASH_LEN]) {
  unsigned int n = 0;
  if (EVP_DigestInit_ex2(c->md, c->sha256, NULL) != 1 || EVP_DigestUpdate(c->md, data, len) != 1 ||
      EVP_DigestFinal_ex(c->md, out, &n) != 1 || n != HASH_LEN) {
    ERR_clear_error();
    return -1;
  }
  return 0;
}

static void sha256_or_raise(lua_State *L, CryptoCtx *c, const void *data, size_t len,
                            unsigned char out[HASH_LEN]) {
  if (crypto_sha256(c, data, len, out) != 0) luaL_error(L, "sha256: OpenSSL digest failed");
}

/* ---- scratch: OpenSSL objects freed on return, error or collection ----- */

typedef struct Scratch {
  EVP_PKEY *pkey;
  EVP_MD_CTX *md;
  BIO *in, *out, *out2;
  unsigned char *buf; /* OPENSSL_malloc'd */
  size_t buflen;
} Scratch;

static int scratch_free(lua_State *L) {
  Scratch *s = luaL_checkudata(L, 1, CRYPTO_SCRATCH_MT);
  EVP_PKEY_free(s->pkey);
  EVP_MD_CTX_free(s->md);
  BIO_free(s->in);
  BIO_free(s->out);
  BIO_free(s->out2);
  OPENSSL_clear_free(s->buf, s->buflen);
  memset(s, 0, sizeof *s);
  ERR_clear_error();
  return 0;
}

/* Push a scratch userdata and mark its slot to-be-closed. */
static Scratch *scratch_push(lua_State *L) {
  Scratch *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, CRYPTO_SCRATCH_MT);
  lua_toclose(L, -1);
  return s;
}

/* ---- hex ---------------------------------------------------------------- */

static void push_hex(lua_State *L, const unsigned char *p, size_t n) {
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n * 2);
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hexdigits[p[i] >> 4];
    out[2 * i + 1] = hexdigits[p[i] & 15];
  }
  luaL_pushresultsize(&b, n * 2);
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decode hex into out (len/2 bytes); -1 on odd length or a non-hex digit. */
static int hex_decode(const char *s, size_t len, unsigned char *out) {
  if (len % 2) return -1;
  for (size_t i = 0; i < len; i += 2) {
    int hi = hexval((unsigned char)s[i]), lo = hexval((unsigned char)s[i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i / 2] = (unsigned char)(hi << 4 | lo);
  }
  return 0;
}

/* core.hex_encode(bytes) -> lowercase hex */
static int l_hex_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_hex(L, (const unsigned char *)s, n);
  return 1;
}

/* core.hex_decode(hex) -> bytes, or nil and a message */
static int l_hex_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, n / 2 + 1);
  if (hex_decode(s, n, out) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, n % 2 ? "hex_decode: odd number of hex digits" : "hex_decode: not a hex digit");
    return 2;
  }
  luaL_pushresultsize(&b, n / 2);
  return 1;
}

/* ---- SHA-256 ------------------------------------------------------------ */

/* core.sha256(bytes) -> 32 raw bytes */
static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char h[HASH_LEN];
  sha256_or_raise(L, get_ctx(L), s, n, h);
  lua_pushlstring(L, (const char *)h, HASH_LEN);
  return 1;
}

/* core.sha256_hex(bytes) -> 64 lowercase hex digits */
static int l_sha256_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char h[HASH_LEN];
  sha256_or_raise(L, get_ctx(L), s, n, h);
  push_hex(L, h, HASH_LEN);
  return 1;
}

/* ---- keys --------------------------------------------------------------- */

/* Passphrase callback that refuses: OpenSSL's default would prompt on the
 * terminal for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  CARACAL_UNUSED(buf);
  CARACAL_UNUSED(size);
  CARACAL_UNUSED(rwflag);
  CARACAL_UNUSED(u);
  return -1;
}

/* Is pkey an EC key on P-256? Puts what it is into what (for messages). */
static bool is_p256(EVP_PKEY *pkey, char *what, size_t whatlen) {
  if (!EVP_PKEY_is_a(pkey, "EC")) {
    const char *t = EVP_PKEY_get0_type_name(pkey);
    snprintf(what, whatlen, "of type %s", t ? t : "unknown");
    return false;
  }
  char group[64] = "";
  size_t glen = 0;
  if (EVP_PKEY_get_group_name(pkey, group, sizeof group, &glen) != 1) {
    snprintf(what, whatlen, "an EC key on an unnamed curve");
    return false;
  }
  if (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0 &&
      strcmp(group, "secp256r1") != 0) {
    snprintf(what, whatlen, "an EC key on curve %s", group);
    return false;
  }
  return true;
}

/* Load an unencrypted PEM private key (PKCS#8; traditional EC PEM is read
 * too) into s->pkey, or raise naming fn. The message never quotes the key. */
static void load_private(lua_State *L, Scratch *s, int arg, const char *fn) {
  size_t n;
  const char *pem = luaL_checklstring(L, arg, &n);
  if (n > INT_MAX) luaL_argerror(L, arg, "private key PEM too long");
  s->in = BIO_new_mem_buf(pem, (int)n);
  if (!s->in) luaL_error(L, "%s: out of memory", fn);
  s->pkey = PEM_read_bio_PrivateKey(s->in, NULL, no_passphrase, NULL);
  ERR_clear_error();
  if (!s->pkey) {
    if (strstr(pem, "ENCRYPTED PRIVATE KEY"))
      luaL_error(L, "%s: the private key is encrypted; an unencrypted PEM PKCS#8 ECDSA P-256 key "
                 "is expected", fn);
    luaL_error(L, "%s: invalid private key (expected an unencrypted PEM PKCS#8 ECDSA P-256 key)", fn);
  }
  char what[96];
  if (!is_p256(s->pkey, what, sizeof what))
    luaL_error(L, "%s: the private key is %s, not an ECDSA P-256 key", fn, what);
}

/* Load a PEM SubjectPublicKeyInfo P-256 key into s->pkey, or raise. */
static void load_public(lua_State *L, Scratch *s, int arg, const char *fn) {
  size_t n;
  const char *pem = luaL_checklstring(L, arg, &n);
  if (n > INT_MAX) luaL_argerror(L, arg, "public key PEM too long");
  s->in = BIO_new_mem_buf(pem, (int)n);
  if (!s->in) luaL_error(L, "%s: out of memory", fn);
  s->pkey = PEM_read_bio_PUBKEY(s->in, NULL, no_passphrase, NULL);
  ERR_clear_error();
  if (!s->pkey) {
    if (strstr(pem, "PRIVATE KEY"))
      luaL_error(L, "%s: a private key was given where a public key (PEM SubjectPublicKeyInfo) "
                 "is expected", fn);
    luaL_error(L, "%s: invalid public key (expected PEM SubjectPublicKeyInfo, "
               "\"BEGIN PUBLIC KEY\", of an ECDSA P-256 key)", fn);
  }
  char what[96];
  if (!is_p256(s->pkey, what, sizeof what))
    luaL_error(L, "%s: the public key is %s, not an ECDSA P-256 key", fn, what);
}

/* Push the contents of a memory BIO as a string. */
static void push_bio(lua_State *L, BIO *bio, const char *fn) {
  char *data = NULL;
  long n = BIO_get_mem_data(bio, &data);
  if (n <= 0 || !data) luaL_error(L, "%s: OpenSSL produced no output", fn);
  lua_pushlstring(L, data, (size_t)n);
}

/* Write the public half of s->pkey as PEM SubjectPublicKeyInfo to s->out2
 * and push it. */
static void push_public_pem(lua_State *L, Scratch *s, const char *fn) {
  s->out2 = BIO_new(BIO_s_mem());
  if (!s->out2 || PEM_write_bio_PUBKEY(s->out2, s->pkey) != 1)
    luaL_error(L, "%s: cannot encode the public key", fn);
  push_bio(L, s->out2, fn);
}

/* core.ec_generate() -> private_pem (PKCS#8), public_pem (SPKI) */
static int l_ec_generate(lua_State *L) {
  Scratch *s = scratch_push(L);
  s->pkey = EVP_EC_gen("P-256");
  if (!s->pkey) luaL_error(L, "ec_generate: OpenSSL could not generate a P-256 key");
  s->out = BIO_new(BIO_s_secmem());
  if (!s->out) s->out = BIO_new(BIO_s_mem());
  if (!s->out || PEM_write_bio_PKCS8PrivateKey(s->out, s->pkey, NULL, NULL, 0, NULL, NULL) != 1)
    luaL_error(L, "ec_generate: cannot encode the private key");
  push_bio(L, s->out, "ec_generate");
  push_public_pem(L, s, "ec_generate");
  return 2;
}

/* core.ec_public_from_private(private_pem) -> public_pem */
static int l_ec_public_from_private(lua_State *L) {
  Scratch *s = scratch_push(L);
  load_private(L, s, 1, "ec_public_from_private");
  push_public_pem(L, s, "ec_public_from_private");
  return 1;
}

/* core.ec_sign(private_pem, message) -> lowercase hex DER signature.
 * ECDSA P-256 with SHA-256 over message (the digest signed is
 * SHA-256(message)). */
static int l_ec_sign(lua_State *L) {
  size_t mlen;
  const char *msg = luaL_checklstring(L, 2, &mlen);
  Scratch *s = scratch_push(L);
  load_private(L, s, 1, "ec_sign");
  s->md = EVP_MD_CTX_new();
  size_t siglen = 0;
  if (!s->md || EVP_DigestSignInit_ex(s->md, NULL, "SHA256", NULL, NULL, s->pkey, NULL) != 1 ||
      EVP_DigestSign(s->md, NULL, &siglen, (const unsigned char *)msg, mlen) != 1)
    luaL_error(L, "ec_sign: OpenSSL could not set up the signature");
  s->buf = OPENSSL_malloc(siglen);
  s->buflen = siglen;
  if (!s->buf || EVP_DigestSign(s->md, s->buf, &siglen, (const unsigned char *)msg, mlen) != 1)
    luaL_error(L, "ec_sign: OpenSSL could not sign");
  push_hex(L, s->buf, siglen);
  return 1;
}

/* core.ec_verify(public_pem, message, hex_signature) -> boolean.
 * A bad, truncated or non-hex signature is false; a malformed key raises. */
static int l_ec_verify(lua_State *L) {
  size_t mlen, hlen;
  const char *msg = luaL_checklstring(L, 2, &mlen);
  const char *hex = luaL_checklstring(L, 3, &hlen);
  Scratch *s = scratch_push(L);
  load_public(L, s, 1, "ec_verify");
  /* A DER ECDSA P-256 signature is at most 72 bytes; anything far longer
   * is not one (and is not worth decoding). */
  if (hlen == 0 || hlen % 2 || hlen > 1024) {
    lua_pushboolean(L, 0);
    return 1;
  }
  s->buflen = hlen / 2;
  s->buf = OPENSSL_malloc(s->buflen);
  if (!s->buf) luaL_error(L, "ec_verify: out of memory");
  if (hex_decode(hex, hlen, s->buf) != 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  s->md = EVP_MD_CTX_new();
  if (!s->md || EVP_DigestVerifyInit_ex(s->md, NULL, "SHA256", NULL, NULL, s->pkey, NULL) != 1)
    luaL_error(L, "ec_verify: OpenSSL could not set up the verification");
  int rc = EVP_DigestVerify(s->md, s->buf, s->buflen, (const unsigned char *)msg, mlen);
  ERR_clear_error();
  lua_pushboolean(L, rc == 1);
  return 1;
}

/* ---- Merkle trees (domain.md "Ledger events and Merkle batches") -------- */

/* core.merkle_leaf(bytes) -> SHA-256(SHA-256(bytes)), 32 raw bytes: the
 * leaf of an event whose hashed string is bytes. */
static int l_merkle_leaf(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  CryptoCtx *c = get_ctx(L);
  unsigned char h[HASH_LEN];
  sha256_or_raise(L, c, s, n, h);
  sha256_or_raise(L, c, h, HASH_LEN, h);
  lua_pushlstring(L, (const char *)h, HASH_LEN);
  return 1;
}

/* Copy the leaves (array at idx, each 32 raw bytes) into a scratch buffer
 * (a plain userdata pushed on the stack); returns it and the count. */
static unsigned char *collect_leaves(lua_State *L, int idx, const char *fn, lua_Integer *count) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (n < 1) luaL_error(L, "%s: no leaves (a Merkle tree needs at least one)", fn);
  if ((lua_Unsigned)n > ((size_t)-1) / (2 * HASH_LEN)) luaL_error(L, "%s: too many leaves", fn);
  unsigned char *buf = lua_newuserdatauv(L, (size_t)n * HASH_LEN, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len = 0;
    const char *leaf = NULL;
    if (lua_rawgeti(L, idx, i) == LUA_TSTRING) leaf = lua_tolstring(L, -1, &len);
    if (!leaf || len != HASH_LEN)
      luaL_error(L, "%s: leaf %I is not a 32-byte hash (got %s of length %d)", fn, (LUAI_UACINT)i,
                 luaL_typename(L, -1), leaf ? (int)len : 0);
    memcpy(buf + (size_t)(i - 1) * HASH_LEN, leaf, HASH_LEN);
    lua_pop(L, 1);
  }
  *count = n;
  return buf;
}

/* Replace the m nodes in buf by their m' = ceil(m/2) parents, in place:
 * parent i = SHA-256(node 2i || node 2i+1), the last node pairing with
 * itself when m is odd. Returns m'. */
static lua_Integer merkle_level(lua_State *L, CryptoCtx *c, unsigned char *buf, lua_Integer m) {
  unsigned char pair[2 * HASH_LEN];
  lua_Integer up = (m + 1) / 2;
  for (lua_Integer i = 0; i < up; i++) {
    const unsigned char *left = buf + (size_t)(2 * i) * HASH_LEN;
    const unsigned char *right = 2 * i + 1 < m ? left + HASH_LEN : left;
    memcpy(pair, left, HASH_LEN);
    memcpy(pair + HASH_LEN, right, HASH_LEN);
    sha256_or_raise(L, c, pair, sizeof pair, buf + (size_t)i * HASH_LEN);
  }
  return up;
}

/* core.merkle_root(leaves) -> 32 raw bytes */
static int l_merkle_root(lua_State *L) {
  CryptoCtx *c = get_ctx(L);
  lua_Integer m;
  unsigned char *buf = collect_leaves(L, 1, "merkle_root", &m);
  while (m > 1) m = merkle_level(L, c, buf, m);
  lua_pushlstring(L, (const char *)buf, HASH_LEN);
  return 1;
}

/* core.merkle_proof(leaves, index) -> root, siblings, sides
 * index is 1-based; siblings are 32 raw bytes each, from the leaf up;
 * sides[k] is "left" or "right": where siblings[k] sits. */
static int l_merkle_proof(lua_State *L) {
  CryptoCtx *c = get_ctx(L);
  lua_Integer index = luaL_checkinteger(L, 2);
  lua_Integer m;
  unsigned char *buf = collect_leaves(L, 1, "merkle_proof", &m); /* buf */
  luaL_argcheck(L, index >= 1 && index <= m, 2, "leaf index out of range");
  lua_newtable(L); /* buf siblings */
  lua_newtable(L); /* buf siblings sides */
  lua_Integer at = index - 1, k = 0;
  while (m > 1) {
    lua_Integer sib = (at % 2 == 0) ? at + 1 : at - 1;
    if (sib >= m) sib = at; /* the odd last node pairs with itself */
    lua_pushlstring(L, (const char *)buf + (size_t)sib * HASH_LEN, HASH_LEN);
    lua_rawseti(L, -3, ++k);
    lua_pushstring(L, at % 2 == 0 ? "right" : "left");
    lua_rawseti(L, -2, k);
    m = merkle_level(L, c, buf, m);
    at /= 2;
  }
  lua_pushlstring(L, (const char *)buf, HASH_LEN); /* buf siblings sides root */
  lua_rotate(L, -3, 1);                            /* buf root siblings sides */
  return 3;
}

void crypto_open(lua_State *L) {
  if (luaL_newmetatable(L, CRYPTO_SCRATCH_MT)) {
    lua_pushcfunction(L, scratch_free);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, scratch_free);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, CRYPTO_CTX_MT)) {
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);

  CryptoCtx *c = lua_newuserdatauv(L, sizeof *c, 0); /* core ctx */
  c->sha256 = NULL;
  c->md = NULL;
  luaL_setmetatable(L, CRYPTO_CTX_MT);
  c->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
  c->md = EVP_MD_CTX_new();
  if (!c->sha256 || !c->md) {
    ERR_clear_error();
    luaL_error(L, "caracal.core: OpenSSL has no SHA-256");
  }
  static const luaL_Reg fns[] = {
    {"sha256", l_sha256},
    {"sha256_hex", l_sha256_hex},
    {"hex_encode", l_hex_encode},
    {"hex_decode", l_hex_decode},
    {"ec_generate", l_ec_generate},
    {"ec_public_from_private", l_ec_public_from_private},
    {"ec_sign", l_ec_sign},
    {"ec_verify", l_ec_verify},
    {"merkle_leaf", l_merkle_leaf},
    {"merkle_root", l_merkle_root},
    {"merkle_proof", l_merkle_proof},
    {NULL, NULL}
  };
  luaL_setfuncs(L, fns, 1); /* core (ctx is each function's upvalue) */
}
