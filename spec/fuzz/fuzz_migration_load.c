/*
 * fuzz_migration_load.c: libFuzzer target for loading migration files
 * (lua/caracal/migrate/scripts.lua: file name checks, text-only loading,
 * running the chunk in the migration environment, validating the table
 * it returns, checksums and the revision graph).
 *
 *   make fuzz-build && build/fuzz/fuzz_migration_load -max_len=2048
 *
 * Input: when it starts with '#', its first line is the file name (so
 * name validation is fuzzed too); otherwise the name is
 * 0001_abc123_fuzz.lua. The rest is the file's content, written to a
 * private temporary folder and loaded with scripts.scan{dir = ...}.
 *
 * The state is bounded the way a loader of untrusted text must be: an
 * allocator with a 64 MB cap ("not enough memory" is an ordinary error),
 * a count hook that stops a chunk after 2 million instructions and keeps
 * raising at every instruction after that (so pcall cannot swallow it;
 * xpcall's message handler is skipped once the limit is hit, since Lua
 * runs it with hooks off), and a `caracal` API stub with the value
 * functions only, so a fuzzed script cannot open connections or start a
 * cluster. `lfs` is a stub listing the one file, so no process is started.
 *
 * Promises checked: scan returns or raises (never a crash or a hang);
 * when it returns a script, its checksum is 64 hex digits and its
 * revision is the one in the file name.
 */
#include <errno.h>
#include <unistd.h>

#include "fuzz_common.h"

#define MEM_CAP ((size_t)64 << 20)
#define INSTRUCTION_LIMIT 2000000L

static size_t mem_used;
static long instructions;
static int limit_hit;
static char dir[64];
static char name[256];

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (!ptr) osize = 0;
  if (nsize == 0) {
    mem_used -= osize;
    free(ptr);
    return NULL;
  }
  if (nsize > osize && mem_used + (nsize - osize) > MEM_CAP) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) mem_used = mem_used - osize + nsize;
  return p;
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  instructions += limit_hit ? 1 : 1000;
  if (!limit_hit && instructions > INSTRUCTION_LIMIT) {
    limit_hit = 1;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  }
  if (limit_hit) luaL_error(L, "fuzz: instruction limit");
}

/* fuzz_hit() -> whether the limit was hit (for the xpcall wrapper). */
static int fuzz_hit(lua_State *L) {
  lua_pushboolean(L, limit_hit);
  return 1;
}

static int fuzz_name(lua_State *L) {
  lua_pushstring(L, name);
  return 1;
}

static const char SETUP[] =
  "local core, hit, current = ...\n"
  /* the API a migration sees, without anything that opens connections */
  "local api = {}\n"
  "for _, k in ipairs({'Decimal', 'is_decimal', 'Instant', 'is_instant', 'utcnow', 'uuid4', 'uuid',\n"
  "                    'is_uuid', 'null', 'json_encode', 'json_decode', 'json_array', 'Error', 'is_error'}) do\n"
  "  api[k] = core[k]\n"
  "end\n"
  "package.loaded['caracal'] = api\n"
  "package.loaded['lfs'] = {\n"
  "  attributes = function(d, what) return 'directory' end,\n"
  "  dir = function(d)\n"
  "    local names, i = { '.', '..', current() }, 0\n"
  "    return function() i = i + 1 return names[i] end\n"
  "  end,\n"
  "}\n"
  "local real_xpcall = xpcall\n"
  "xpcall = function(f, h, ...)\n"
  "  return real_xpcall(f, function(e) if hit() then return e end return h(e) end, ...)\n"
  "end\n"
  "local scripts = require 'caracal.migrate.scripts'\n"
  "return function(d, file)\n"
  "  local s = scripts.scan({ dir = d })\n"
  "  if #s.all == 1 then\n"
  "    local r = s.all[1]\n"
  "    assert(r.checksum:match('^' .. ('%x'):rep(64) .. '$'), 'bad checksum')\n"
  "    assert(file:match(scripts.FILE_PATTERN) and select(2, file:match(scripts.FILE_PATTERN)) == r.revision,\n"
  "           'revision differs from the file name')\n"
  "  end\n"
  "end\n";

static lua_State *state(void) {
  static lua_State *L;
  if (L) return L;
  FUZZ_CHECK(mkdtemp(strcpy(dir, "/tmp/caracal-fuzz-mig.XXXXXX")) != NULL);
  L = lua_newstate(capped_alloc, NULL);
  FUZZ_CHECK(L != NULL);
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushliteral(L, CARACAL_LUA_DIR "/?.lua;" CARACAL_LUA_DIR "/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  luaL_requiref(L, "caracal.core", luaopen_caracal_core, 0); /* core */
  FUZZ_CHECK(luaL_loadstring(L, SETUP) == LUA_OK);           /* core setup */
  lua_insert(L, -2);                                         /* setup core */
  lua_pushcfunction(L, fuzz_hit);
  lua_pushcfunction(L, fuzz_name);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_migration_load: setup: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setglobal(L, "fuzz_check");
  return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = state();
  const char *body = (const char *)data;
  size_t blen = size;
  snprintf(name, sizeof name, "0001_abc123_fuzz.lua");
  if (size > 0 && data[0] == '#') {
    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) - 1 : size - 1;
    if (n == 0 || n >= 200) return 0;
    for (size_t i = 0; i < n; i++) {
      char c = (char)data[1 + i];
      if (c == '/' || c == '\0') return 0; /* one file in our folder */
      name[i] = c;
    }
    name[n] = '\0';
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 0;
    body = nl ? (const char *)nl + 1 : "";
    blen = nl ? size - (size_t)(nl - data) - 1 : 0;
  }
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(body, 1, blen, f);
  fclose(f);

  int top = lua_gettop(L);
  instructions = 0;
  limit_hit = 0;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1000);
  lua_getglobal(L, "fuzz_check");
  lua_pushstring(L, dir);
  lua_pushstring(L, name);
  int rc = lua_pcall(L, 2, 0, 0);
  lua_sethook(L, NULL, 0, 0);
  if (rc != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg && (strstr(msg, "bad checksum") || strstr(msg, "revision differs"))) {
      fprintf(stderr, "fuzz_migration_load: %s\n", msg);
      abort();
    }
  }
  lua_settop(L, top);
  lua_gc(L, LUA_GCCOLLECT, 0);
  unlink(path);
  return 0;
}
