/*
 * repl.c: the terminal under the administration REPL. The REPL itself
 * (evaluation, printing, helpers, completion candidates) is Lua, in
 * lua/caracal/repl.lua; this file only does what Lua cannot: GNU readline,
 * signals, and the cancel key of the REPL's connection. main.c registers
 * it as package.loaded["caracal.host"]:
 *
 *   host.isatty([which])            is stdin (or stdout, stderr) a terminal?
 *   host.repl(opts)                 require("caracal.repl").run(opts)
 *   host.readline(prompt)           a line; nil at end of input; false on Ctrl-C
 *   host.history_load(path, max)    read the history file (created 0600)
 *   host.history_add(line)          add a line, append it to the file, trim the file
 *   host.history_save()             rewrite the file from memory, trimmed
 *   host.set_completer(fn)          Tab calls fn(text, line, start) -> {words}[, append]
 *   host.interruptible(msgh, f, ...) xpcall(f, msgh, ...) where Ctrl-C stops Lua
 *   host.query(f, ...)              pcall(f, ...) where Ctrl-C cancels the statement
 *   host.set_cancel(conn)           the connection whose statement Ctrl-C cancels
 *   host.now()                      monotonic clock, seconds
 *
 * Ctrl-C has one meaning per moment, chosen by what the REPL is doing
 * (sig_mode): while a line is read it abandons the line; while a statement
 * runs inside host.query it sends a cancel request (PQcancel is
 * async-signal-safe; psql does the same), so the statement fails with
 * 57014 and the session lives on; while other Lua code runs it sets a hook
 * that raises "interrupted!" (lua.c's laction/lstop). Those few statics
 * are the host's, as lua.c's globalL is; the library has none.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "internal.h"

enum { MODE_IDLE, MODE_READING, MODE_RUNNING, MODE_DEFER };

static volatile sig_atomic_t sig_mode = MODE_IDLE;
static volatile sig_atomic_t got_sigint = 0;
static volatile sig_atomic_t got_sigwinch = 0;
static volatile sig_atomic_t in_query = 0;
/* The state the hook goes into; set before sig_mode becomes RUNNING. */
static lua_State *volatile running_L = NULL;
/* Cancel key of the REPL session's connection. Only swapped with SIGINT
 * blocked, so the handler never sees a freed one. */
static PGcancel *volatile cancel_key = NULL;

static bool signals_installed = false;
static struct sigaction old_sigint, old_sigwinch;

/* Readline calls the completer with no user pointer: it needs the state. */
static lua_State *completion_L = NULL;
static const char COMPLETER_KEY = 0;
static char *history_path = NULL;
static int history_max = 1000;

/* ---- signals ------------------------------------------------------------ */

/* lua.c's lstop: raised at the next Lua instruction after Ctrl-C. */
static void lstop(lua_State *L, lua_Debug *ar) {
  CARACAL_UNUSED(ar);
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

/* Only async-signal-safe work: flags, PQcancel, lua_sethook (as lua.c). */
static void on_sigint(int sig) {
  CARACAL_UNUSED(sig);
  if (sig_mode == MODE_DEFER) {
    /* A long command stops at its next safe point; a second Ctrl-C ends
     * the process at once, as the default would. */
    if (got_sigint) {
      signal(SIGINT, SIG_DFL);
      raise(SIGINT);
      return;
    }
    static const char msg[] = "\ninterrupt: stopping at the next safe point (Ctrl-C again to quit now)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    CARACAL_UNUSED(w);
    got_sigint = 1;
    return;
  }
  if (sig_mode == MODE_RUNNING) {
    /* The terminal echoed ^C; the message that follows gets its own line. */
    ssize_t w = write(STDERR_FILENO, "\n", 1);
    CARACAL_UNUSED(w);
    PGcancel *key = cancel_key;
    if (in_query && key) {
      char err[256];
      PQcancel(key, err, sizeof err);
    } else if (running_L) {
      lua_sethook(running_L, lstop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    }
  } else {
    got_sigint = 1; /* reading: the loop abandons the line; idle: ignored */
  }
}

static void on_sigwinch(int sig) {
  CARACAL_UNUSED(sig);
  got_sigwinch = 1;
}

/* Installed at the REPL's first prompt, never for scripts: a script keeps
 * the default Ctrl-C (the process ends). No SA_RESTART, so a Ctrl-C wakes
 * the prompt's pselect. */
static void install_signals(void) {
  if (signals_installed) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, &old_sigint);
  sa.sa_handler = on_sigwinch;
  sigaction(SIGWINCH, &sa, &old_sigwinch);
  signals_installed = true;
  /* We handle the signals ourselves; readline must not install its own
   * around each key in callback mode. */
  rl_catch_signals = 0;
  rl_catch_sigwinch = 0;
}

static void set_cancel_key(PGcancel *key) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigprocmask(SIG_BLOCK, &block, &old);
  PGcancel *prev = cancel_key;
  cancel_key = key;
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (prev) PQfreeCancel(prev);
}

/* ---- line reading ------------------------------------------------------- */

static char *line_read = NULL;
static bool line_done = false;

static void on_line(char *line) {
  line_read = line;
  line_done = true;
  rl_callback_handler_remove(); /* no new prompt: the REPL decides */
}

/*
 * host.readline(prompt) -> line | nil (end of input) | false (Ctrl-C).
 * Readline's callback interface with pselect, so a Ctrl-C is seen
 * between keys without longjmp out of a signal handler (psql's way) and
 * without the race of checking a flag before a plain select.
 */
static int host_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  install_signals();
  fflush(stdout);
  fflush(stderr);
  completion_L = L;
  sigset_t block, waitmask;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGWINCH);
  sigprocmask(SIG_BLOCK, &block, &waitmask); /* waitmask: the mask to restore */
  got_sigint = 0;
  sig_mode = MODE_READING;
  line_done = false;
  line_read = NULL;
  rl_callback_handler_install(prompt, on_line);
  int fd = fileno(rl_instream ? rl_instream : stdin);
  bool interrupted = false, failed = false;
  while (!line_done) {
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(fd, &fds);
    int r = pselect(fd + 1, &fds, NULL, NULL, NULL, &waitmask);
    if (got_sigwinch) {
      got_sigwinch = 0;
      rl_resize_terminal();
    }
    if (got_sigint) {
      interrupted = true;
      break;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      failed = true;
      break;
    }
    if (r > 0) rl_callback_read_char();
  }
  if (interrupted || failed) {
    /* Drop the half-typed line (and any search or key sequence), then
     * leave the cursor on a fresh line, as bash and psql do. */
    rl_free_line_state();
    rl_callback_sigcleanup();
    rl_replace_line("", 0);
    if (interrupted) rl_echo_signal_char(SIGINT);
    rl_crlf();
    rl_callback_handler_remove();
  }
  got_sigint = 0;
  sig_mode = MODE_IDLE;
  sigprocmask(SIG_SETMASK, &waitmask, NULL);
  fflush(rl_outstream ? rl_outstream : stdout);
  if (interrupted) {
    lua_pushboolean(L, 0);
  } else if (failed || !line_read) {
    lua_pushnil(L);
  } else {
    lua_pushstring(L, line_read);
    free(line_read);
    line_read = NULL;
  }
  return 1;
}

/* ---- history ------------------------------------------------------------ */

/* host.history_load(path[, max]): keep the file name, read the file. The
 * file is created 0600 first: history holds SQL, perhaps secrets. */
static int host_history_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  history_max = (int)luaL_optinteger(L, 2, 1000);
  char *copy = strdup(path);
  if (!copy) return luaL_error(L, "out of memory");
  free(history_path);
  history_path = copy;
  using_history();
  stifle_history(history_max);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (fd >= 0) close(fd);
  int rc = read_history(path);
  lua_pushboolean(L, rc == 0);
  return 1;
}

/* host.history_add(line): in memory and appended to the file at once, so
 * a crash or a second REPL loses nothing; the file is trimmed each time. */
static int host_history_add(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  add_history(line);
  if (history_path) {
    append_history(1, history_path);
    history_truncate_file(history_path, history_max);
  }
  return 0;
}

/* host.history_save(): the whole in-memory history, written at exit. */
static int host_history_save(lua_State *L) {
  CARACAL_UNUSED(L);
  if (history_path) {
    write_history(history_path);
    history_truncate_file(history_path, history_max);
  }
  return 0;
}

/* ---- completion ---------------------------------------------------------- */

/* Break words at operators and quotes but not at '.' or ':', so Lua sees
 * "caracal.Dec" or "db:ses" whole and a string's SQL word alone. */
static char word_breaks[] = " \t\n\"'`@$><=;|&{}()[],+-*/%^#~";

/*
 * Readline's completion hook: ask Lua for the candidates and hand them
 * over in readline's layout (matches[0] is their longest common prefix).
 * Never falls back to file names; a Lua error just means no completion.
 */
static char **complete(const char *text, int start, int end) {
  CARACAL_UNUSED(end);
  rl_attempted_completion_over = 1;
  lua_State *L = completion_L;
  if (!L) return NULL;
  int top = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &COMPLETER_KEY) != LUA_TFUNCTION) {
    lua_settop(L, top);
    return NULL;
  }
  lua_pushstring(L, text);
  lua_pushstring(L, rl_line_buffer);
  lua_pushinteger(L, start);
  if (lua_pcall(L, 3, 2, 0) != LUA_OK || !lua_istable(L, -2)) { /* words append */
    lua_settop(L, top);
    return NULL;
  }
  const char *append = lua_tostring(L, -1);
  rl_completion_append_character = append ? append[0] : '\0';
  lua_Integer n = luaL_len(L, -2);
  if (n <= 0) {
    lua_settop(L, top);
    return NULL;
  }
  char **matches = calloc((size_t)n + 2, sizeof *matches);
  if (!matches) {
    lua_settop(L, top);
    return NULL;
  }
  size_t common = 0;
  lua_Integer kept = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    const char *w = lua_tostring(L, -1);
    if (w && (matches[kept + 1] = strdup(w)) != NULL) {
      if (kept == 0) common = strlen(w);
      else {
        size_t k = 0;
        while (k < common && matches[1][k] == w[k]) k++;
        common = k;
      }
      kept++;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  if (kept == 0 || (matches[0] = strndup(matches[1], common)) == NULL) {
    for (lua_Integer i = 1; i <= kept; i++) free(matches[i]);
    free(matches);
    return NULL;
  }
  if (kept == 1) { /* a unique match: readline wants it alone */
    free(matches[0]);
    matches[0] = matches[1];
    matches[1] = NULL;
  }
  return matches;
}

/* host.set_completer(fn): Tab calls fn(text, line, start). */
static int host_set_completer(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &COMPLETER_KEY);
  rl_readline_name = "caracal";
  rl_completer_word_break_characters = word_breaks;
  rl_attempted_completion_function = complete;
  return 0;
}

/* ---- running code --------------------------------------------------------- */

/* host.defer_interrupts(): from now on Ctrl-C only sets a flag that
 * host.interrupted() reports, so a command (a migration run) can stop
 * between steps, release its lock and exit cleanly. */
static int host_defer_interrupts(lua_State *L) {
  CARACAL_UNUSED(L);
  install_signals();
  got_sigint = 0;
  sig_mode = MODE_DEFER;
  return 0;
}

/* host.interrupted() -> true once Ctrl-C came in deferred mode. */
static int host_interrupted(lua_State *L) {
  lua_pushboolean(L, sig_mode == MODE_DEFER && got_sigint);
  return 1;
}

/* host.interruptible(msgh, f, ...) -> true, results | false, err.
 * xpcall during which Ctrl-C interrupts Lua (or cancels a statement). */
static int host_interruptible(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  install_signals();
  int nargs = lua_gettop(L) - 2;
  lua_State *prev_L = running_L;
  sig_atomic_t prev_mode = sig_mode;
  running_L = L;
  sig_mode = MODE_RUNNING;
  int status = lua_pcall(L, nargs, LUA_MULTRET, 1); /* msgh results... */
  sig_mode = prev_mode;
  running_L = prev_L;
  /* A Ctrl-C that came too late for the hook must not hit the REPL; a
   * hook the user set with debug.sethook stays. */
  if (prev_mode != MODE_RUNNING && lua_gethook(L) == lstop) lua_sethook(L, NULL, 0, 0);
  lua_pushboolean(L, status == LUA_OK);
  lua_replace(L, 1); /* ok results... */
  return lua_gettop(L);
}

/* host.query(f, ...) -> true, results | false, err. pcall during which
 * Ctrl-C sends a cancel request for the REPL connection's statement. */
static int host_query(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  sig_atomic_t prev = in_query;
  in_query = 1;
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  in_query = prev;
  lua_pushboolean(L, status == LUA_OK);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/*
 * host.set_cancel(conn | nil): the connection whose statement Ctrl-C
 * cancels inside host.query. Its PGcancel is made here, ahead of time: a
 * signal handler may call PQcancel but not PQgetCancel (it allocates).
 * The previous key (an earlier REPL connection) is freed.
 */
static int host_set_cancel(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    set_cancel_key(NULL);
    return 0;
  }
  caracal_Conn *conn = lconn_get(L, 1);
  luaL_argcheck(L, conn != NULL, 1, "the connection was released");
  set_cancel_key(PQgetCancel(caracal_conn_pg(conn)));
  return 0;
}

/* host.isatty([which]) -> is "stdin" (default), "stdout" or "stderr" a terminal? */
static int host_isatty(lua_State *L) {
  static const char *const names[] = {"stdin", "stdout", "stderr", NULL};
  static const int fds[] = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
  int which = luaL_checkoption(L, 1, "stdin", names);
  lua_pushboolean(L, isatty(fds[which]));
  return 1;
}

static int host_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* host.repl(opts): what cli.lua calls for a terminal with no script. */
static int host_repl(lua_State *L) {
  lua_settop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "caracal.repl");
  lua_call(L, 1, 1);                 /* opts repl */
  lua_getfield(L, -1, "run");        /* opts repl run */
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);                 /* opts repl status */
  return 1;
}

/* host.close(): put back what the REPL changed in the process (signal
 * handlers, the cancel key), so code after the REPL sees a plain host. */
static int host_close(lua_State *L) {
  CARACAL_UNUSED(L);
  if (signals_installed) {
    sigaction(SIGINT, &old_sigint, NULL);
    sigaction(SIGWINCH, &old_sigwinch, NULL);
    signals_installed = false;
  }
  set_cancel_key(NULL);
  free(history_path);
  history_path = NULL;
  completion_L = NULL;
  return 0;
}

static const luaL_Reg host_funcs[] = {
  {"isatty", host_isatty},
  {"repl", host_repl},
  {"readline", host_readline},
  {"history_load", host_history_load},
  {"history_add", host_history_add},
  {"history_save", host_history_save},
  {"set_completer", host_set_completer},
  {"interruptible", host_interruptible},
  {"defer_interrupts", host_defer_interrupts},
  {"interrupted", host_interrupted},
  {"query", host_query},
  {"set_cancel", host_set_cancel},
  {"now", host_now},
  {"close", host_close},
  {NULL, NULL}
};

/* The module caracal.host; main.c loads it with luaL_requiref. */
int luaopen_caracal_host(lua_State *L);
int luaopen_caracal_host(lua_State *L) {
  luaL_newlib(L, host_funcs);
  return 1;
}
