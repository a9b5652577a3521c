/*
 * fuzz_common.h: what the libFuzzer targets share: a check that aborts
 * with a message (so a broken promise is a crash libFuzzer keeps), and a
 * Lua state with Caracal's C core loaded (made once per process).
 */
#ifndef CARACAL_FUZZ_COMMON_H
#define CARACAL_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_caracal_core(lua_State *L);

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "%s: check failed: %s (line %d)\n", __FILE__, #cond, __LINE__); \
      abort();                                                                        \
    }                                                                                 \
  } while (0)

/* A state with the standard libraries and caracal.core (package.loaded
 * and the global `core`), kept for the whole run. */
static lua_State *fuzz_state(void) {
  static lua_State *L;
  if (L) return L;
  L = luaL_newstate();
  FUZZ_CHECK(L != NULL);
  luaL_openlibs(L);
  luaL_requiref(L, "caracal.core", luaopen_caracal_core, 0);
  lua_setglobal(L, "core");
  return L;
}

#endif
