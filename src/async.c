/*
 * async.c: non-blocking mode, for hosts that run a frame or tick loop and
 * cannot stall for a database round trip.
 *
 *   core.set_nonblocking(true)
 *   core.spawn(function()                      -- a task: a coroutine we own
 *     local rows = session:execute("select pg_sleep(0.5)")  -- yields
 *   end)
 *   while core.poll(0.002) > 0 do draw_frame() end  -- caracal_poll in C
 *
 * A task that would wait registers what it waits for (a connection's
 * socket, a pool slot, a timer, the next frame) in the state's Async
 * record and yields with a continuation (lconn.c's state machine,
 * lpool.c's checkout); caracal_poll checks each wait without blocking
 * (PQconsumeInput reads only what the socket already has) and resumes the
 * task, whose continuation picks up where it stopped. Only tasks yield:
 * the main thread and coroutines the user made block as before, since
 * they do not expect our yields.
 *
 * Everything lives in one userdata in the registry (no C globals): the
 * waiting list in C, and in its user values the tasks (thread -> record),
 * LISTEN callbacks and the listener connection. One listener connection
 * per state, checked out from the pool and kept, carries every LISTEN;
 * caracal_poll hands its notifications to the callbacks, each as a task.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "internal.h"

#define ASYNC_MT "caracal.Async"

/* A pool gives no signal when another thread returns a connection: a task
 * waiting for one is retried this often (and at once when the pool's
 * counters say one may be free). */
#define POOL_RETRY 0.02

/* Registry key of the state's Async record. */
static const char REG_ASYNC = 0;

/* What a task waits for. */
enum { W_NONE, W_READ, W_WRITE, W_POOL, W_TIMER, W_FRAME };

typedef struct Task {
  struct Task *prev, *next; /* the waiting list, oldest first */
  lua_State *co;
  int wait;
  caracal_Conn *conn;   /* W_READ, W_WRITE */
  caracal_Conn **slot;  /* the handle's pointer: conn while it holds it */
  int fd;               /* conn's socket while in the epoll set, else -1 */
  caracal_Pool *pool;   /* W_POOL */
  double until;         /* W_TIMER: deadline; W_POOL: next retry */
  unsigned long epoch;  /* the poll round in which the wait began */
} Task;

typedef struct Async {
  Task *head, *tail;
  int nwaiting;
  bool nonblocking, closed, polling;
  int epfd;             /* caracal_event_fd, made on first request */
  unsigned long epoch;
  caracal_ErrorFn on_error;
  void *error_ud;
  caracal_LogFn log;
  void *log_ud;
  caracal_Conn *listener; /* borrowed from the handle in UV_LISTENER */
  int listen_fd;
} Async;

/* User values of the Async userdata. */
enum {
  UV_TASKS = 1, /* light userdata (the thread) -> Task userdata (anchors it) */
  UV_SCRATCH,   /* array reused by each poll: the round's tasks, anchored */
  UV_CHANNELS,  /* channel -> callback */
  UV_LISTENER,  /* the listener's caracal.Connection, or nil */
  UV_HANDLER,   /* core.on_error function, or nil */
  UV_COUNT = UV_HANDLER
};

double async_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the per-state record --------------------------------------------------- */

static int async_gc(lua_State *L) {
  Async *a = lua_touserdata(L, 1);
  if (a->epfd >= 0) close(a->epfd);
  a->epfd = -1;
  return 0;
}

/* The record if it exists; never allocates (for the C entry points that
 * run outside Lua's protection). */
static Async *async_peek(lua_State *L) {
  Async *a = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &REG_ASYNC) == LUA_TUSERDATA) a = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return a;
}

/* The record, made on first use with the host's options. */
static Async *async_get(lua_State *L) {
  Async *a = async_peek(L);
  if (a) return a;
  a = lua_newuserdatauv(L, sizeof *a, UV_COUNT);  /* a */
  memset(a, 0, sizeof *a);
  a->epfd = -1;
  a->listen_fd = -1;
  if (luaL_newmetatable(L, ASYNC_MT)) {
    lua_pushcfunction(L, async_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  for (int uv = UV_TASKS; uv <= UV_CHANNELS; uv++) {
    lua_newtable(L);
    lua_setiuservalue(L, -2, uv);
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &CARACAL_REG_OPTIONS) == LUA_TUSERDATA) {
    const caracal_Options *o = lua_touserdata(L, -1);
    a->nonblocking = o->nonblocking != 0;
    a->on_error = o->on_error;
    a->error_ud = o->error_ud;
    a->log = o->log;
    a->log_ud = o->log_ud;
  }
  lua_pop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &REG_ASYNC);
  return a;
}

/* Push one of the record's user values. */
static int push_uv(lua_State *L, int uv) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &REG_ASYNC);
  int t = lua_getiuservalue(L, -1, uv);
  lua_remove(L, -2);
  return t;
}

static void set_uv(lua_State *L, int uv) {   /* value */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &REG_ASYNC);  /* value a */
  lua_insert(L, -2);                              /* a value */
  lua_setiuservalue(L, -2, uv);                   /* a */
  lua_pop(L, 1);
}

/* The task record of thread co, or NULL when co is not a task. */
static Task *task_of(lua_State *L, lua_State *co) {
  Task *t = NULL;
  if (push_uv(L, UV_TASKS) == LUA_TTABLE && lua_rawgetp(L, -1, co) == LUA_TUSERDATA)
    t = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return t;
}

bool async_can_yield(lua_State *L) {
  if (!lua_isyieldable(L)) return false; /* the main thread, a C boundary */
  Async *a = async_peek(L);
  return a && a->nonblocking && !a->closed && task_of(L, L) != NULL;
}

/* ---- the waiting list and the epoll set ----------------------------------- */

static void watch(Async *a, int fd, uint32_t events) {
  if (a->epfd < 0 || fd < 0) return;
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(a->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
    epoll_ctl(a->epfd, EPOLL_CTL_MOD, fd, &ev);
}

static void unwatch(Async *a, int fd) {
  if (a->epfd < 0 || fd < 0) return;
  if (fd == a->listen_fd) {
    /* A LISTEN sent by a task shares the listener's socket: keep it. */
    watch(a, fd, EPOLLIN);
    return;
  }
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  epoll_ctl(a->epfd, EPOLL_CTL_DEL, fd, &ev);
}

static void wait_end(Async *a, Task *t) {
  if (t->wait == W_NONE) return;
  if (t->prev) t->prev->next = t->next;
  else a->head = t->next;
  if (t->next) t->next->prev = t->prev;
  else a->tail = t->prev;
  t->prev = t->next = NULL;
  unwatch(a, t->fd);
  t->fd = -1;
  t->wait = W_NONE;
  t->conn = NULL;
  t->slot = NULL;
  t->pool = NULL;
  a->nwaiting--;
}

/* Put t at the end of the waiting list. A task resumed by someone other
 * than caracal_poll may come back still listed: it moves to the end. */
static void wait_begin(Async *a, Task *t, int kind) {
  wait_end(a, t);
  t->wait = kind;
  t->epoch = a->epoch;
  t->prev = a->tail;
  if (a->tail) a->tail->next = t;
  else a->head = t;
  a->tail = t;
  a->nwaiting++;
}

static Task *running_task(lua_State *L) {
  Task *t = task_of(L, L);
  if (!t) luaL_error(L, "caracal: only a task (core.spawn) can wait without blocking");
  return t;
}

int async_yield_conn(lua_State *L, caracal_Conn **slot, lua_KContext ctx, lua_KFunction k) {
  Async *a = async_get(L);
  Task *t = running_task(L);
  caracal_Conn *conn = *slot;
  /* Output libpq could not hand to the socket yet: wait until it can. */
  bool writing = PQflush(conn->pg) == 1;
  wait_begin(a, t, writing ? W_WRITE : W_READ);
  t->conn = conn;
  t->slot = slot;
  t->fd = PQsocket(conn->pg);
  watch(a, t->fd, writing ? EPOLLIN | EPOLLOUT : EPOLLIN);
  return lua_yieldk(L, 0, ctx, k);
}

int async_yield_pool(lua_State *L, caracal_Pool *pool, lua_KContext ctx, lua_KFunction k) {
  Async *a = async_get(L);
  Task *t = running_task(L);
  wait_begin(a, t, W_POOL);
  t->pool = pool;
  t->until = async_now() + POOL_RETRY;
  return lua_yieldk(L, 0, ctx, k);
}

/* Is the wait of t over? Reads what the socket has, never waits. */
static bool task_ready(Async *a, Task *t, double now) {
  /* Released under the task (the continuation reports it). */
  if ((t->wait == W_READ || t->wait == W_WRITE) && *t->slot != t->conn) return true;
  switch (t->wait) {
    case W_WRITE: {
      PGconn *pg = t->conn->pg;
      PQconsumeInput(pg); /* the server may answer while we still send */
      int f = PQflush(pg);
      if (f == 1) return false;
      if (f < 0) return true; /* the continuation reports the failure */
      t->wait = W_READ;
      watch(a, t->fd, EPOLLIN);
    }
    /* fall through */
    case W_READ: {
      PGconn *pg = t->conn->pg;
      return !PQconsumeInput(pg) || !PQisBusy(pg);
    }
    case W_POOL: {
      if (now >= t->until) return true;
      caracal_PoolStatus st;
      caracal_pool_status(t->pool, &st);
      return st.checked_in > 0 || st.max_overflow < 0 || st.total < st.size + st.max_overflow;
    }
    case W_TIMER:
      return now >= t->until;
    case W_FRAME:
      return true;
    default:
      return false;
  }
}

/* ---- running tasks ------------------------------------------------------- */

/* The host hears about an error: core.on_error's function, else the C
 * hook, else the logger, else stderr (never silence). */
static void deliver(Async *a, const char *msg) {
  if (a->on_error) a->on_error(a->error_ud, msg);
  else if (a->log) a->log(a->log_ud, CARACAL_LOG_ERROR, msg);
  else fprintf(stderr, "caracal: uncaught error in a task: %s\n", msg);
}

/* (err, thread) -> "tostring(err)\nstack traceback: ..." ; in a pcall,
 * since __tostring is user code. */
static int describe_error(lua_State *L) {
  lua_State *co = lua_tothread(L, 2);
  const char *msg = luaL_tolstring(L, 1, NULL);
  luaL_traceback(L, co ? co : L, msg, 0);
  return 1;
}

/* Report the error object on top of L (popped), raised in thread, whose
 * value is at index thread. */
static void report_task_error(lua_State *L, Async *a, int thread) {
  int err = lua_gettop(L);
  int top = err - 1;
  if (push_uv(L, UV_HANDLER) == LUA_TFUNCTION) {    /* err handler */
    lua_pushvalue(L, err);
    lua_pushcfunction(L, describe_error);
    lua_pushvalue(L, err);
    lua_pushvalue(L, thread);                       /* err handler err describe err co */
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }                                               /* err handler err traceback */
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) {
      lua_settop(L, top);
      return;
    }
    err = lua_gettop(L); /* the handler failed: that goes to the host */
  } else {
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, describe_error);
  lua_pushvalue(L, err);
  lua_pushvalue(L, thread);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_isstring(L, -1))
    deliver(a, "(an error object that cannot be described)");
  else
    deliver(a, lua_tostring(L, -1));
  lua_settop(L, top);
}

/* A task is over: forget it (it becomes garbage). */
static void task_forget(lua_State *L, Async *a, Task *t) {
  wait_end(a, t);
  push_uv(L, UV_TASKS);
  lua_pushnil(L);
  lua_rawsetp(L, -2, t->co);
  lua_pop(L, 1);
}

/* Resume t with nargs values already on its stack. Returns 1 when it
 * waits again, 0 when it finished, CARACAL_ELUA when it raised (reported,
 * and its pending to-be-closed variables were closed with the error, so
 * `local s <close> = manager:session()` rolls back). */
static int task_resume(lua_State *L, Async *a, Task *t, int nargs) {
  lua_State *co = t->co;
  int nres;
  int st = lua_resume(co, L, nargs, &nres);
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    /* Not one of our waits: the script yielded itself; next frame. */
    if (t->wait == W_NONE) wait_begin(a, t, W_FRAME);
    return 1;
  }
  if (st == LUA_OK) {
    lua_pop(co, nres);
    task_forget(L, a, t);
    return 0;
  }
  /* Keep the thread reachable from L while it is reported and closed. */
  push_uv(L, UV_TASKS);
  lua_rawgetp(L, -1, co);
  lua_getiuservalue(L, -1, 1);                      /* tasks task thread */
  lua_replace(L, -3);
  lua_pop(L, 1);                                    /* thread */
  int thread = lua_gettop(L);
  task_forget(L, a, t);
  lua_xmove(co, L, 1);                              /* thread err */
  lua_pushvalue(L, -1);                             /* thread err err */
  report_task_error(L, a, thread);                  /* thread err */
  /* Close its pending to-be-closed variables, handing them the error. */
  lua_pushvalue(L, -1);
  lua_xmove(L, co, 1);
#if LUA_VERSION_RELEASE_NUM >= 50406
  st = lua_closethread(co, L);
#else
  st = lua_resetthread(co);
#endif
  if (st != LUA_OK) {
    /* The status is the original error's; a different object on top
     * means a __close raised one of its own. */
    lua_xmove(co, L, 1);                            /* thread err err2 */
    if (!lua_rawequal(L, -1, -2)) report_task_error(L, a, thread);
  }
  lua_settop(L, thread - 1);
  return CARACAL_ELUA;
}

/* Function and nargs arguments on top: run them as a new task. With keep,
 * the thread is left where the function was. Returns task_resume's code. */
static int spawn(lua_State *L, Async *a, int nargs, bool keep) {
  lua_State *co = lua_newthread(L);                 /* f args co */
  Task *t = lua_newuserdatauv(L, sizeof *t, 1);     /* f args co t */
  memset(t, 0, sizeof *t);
  t->co = co;
  t->fd = -1;
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1);                      /* t anchors co */
  push_uv(L, UV_TASKS);                             /* f args co t tasks */
  lua_insert(L, -2);
  lua_rawsetp(L, -2, co);                           /* f args co tasks */
  lua_pop(L, 1);                                    /* f args co */
  if (keep) lua_insert(L, -(nargs + 2));            /* co f args */
  else lua_pop(L, 1);                               /* f args */
  lua_xmove(L, co, nargs + 1);
  return task_resume(L, a, t, nargs);
}

/* ---- LISTEN/NOTIFY delivery ------------------------------------------------ */

/* Give the listener connection back: reset now (UNLISTEN *, a round
 * trip) when the caller may block, else parked for the pool to reset at
 * its next checkout. */
static void drop_listener(lua_State *L, Async *a, bool now) {
  if (!a->listener) return;
  int fd = a->listen_fd;
  a->listen_fd = -1;
  unwatch(a, fd);
  a->listener = NULL;
  if (push_uv(L, UV_LISTENER) == LUA_TUSERDATA) {
    if (now) {
      lua_getfield(L, -1, "release");
      lua_insert(L, -2);
      lua_call(L, 1, 0);
      lua_pushnil(L);
    } else {
      lconn_release_deferred(L, -1);
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  set_uv(L, UV_LISTENER);
}

/* Hand each notification the listener received to its callback,
 * callback(channel, payload, pid), started as a task. */
static void deliver_notifications(lua_State *L, Async *a) {
  if (!a->listener) return;
  PGconn *pg = a->listener->pg;
  if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "the LISTEN connection was lost (%s); notifications stop "
             "until core.listen is called again", PQerrorMessage(pg));
    caracal_conn_invalidate(a->listener);
    drop_listener(L, a, false);
    push_uv(L, UV_CHANNELS);
    lua_pushnil(L);
    while (lua_next(L, -2)) {                       /* channels k v */
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, -4);
    }
    lua_pop(L, 1);
    deliver(a, msg);
    return;
  }
  push_uv(L, UV_CHANNELS);                          /* channels */
  PGnotify *n;
  while ((n = PQnotifies(pg)) != NULL) {
    if (lua_getfield(L, -1, n->relname) == LUA_TFUNCTION) {
      lua_pushstring(L, n->relname);
      lua_pushstring(L, n->extra);
      lua_pushinteger(L, n->be_pid);                /* channels fn ch payload pid */
      PQfreemem(n);
      spawn(L, a, 3, false);
    } else {
      lua_pop(L, 1);
      PQfreemem(n);
    }
  }
  lua_pop(L, 1);
}

/* ---- caracal_poll ------------------------------------------------------------ */

/* poll(budget) -> tasks still waiting, or a negative status. */
static int poll_run(lua_State *L) {
  double budget = lua_tonumber(L, 1);
  Async *a = async_get(L);
  if (a->closed) {
    lua_pushinteger(L, CARACAL_ECLOSED);
    return 1;
  }
  if (a->polling || task_of(L, L)) {
    lua_pushinteger(L, CARACAL_EINVAL);
    return 1;
  }
  a->polling = true;
  double start = async_now();
  unsigned long epoch = ++a->epoch;
  deliver_notifications(L, a);

  /* This round's tasks: those that began waiting before it, in order.
   * Anchored in the scratch array, since a resumed task may finish and
   * become garbage while the round goes on. */
  push_uv(L, UV_SCRATCH);
  int scratch = lua_gettop(L);
  push_uv(L, UV_TASKS);
  int tasks = lua_gettop(L);
  int n = 0;
  for (Task *t = a->head; t; t = t->next) {
    if (t->epoch >= epoch) continue;
    lua_rawgetp(L, tasks, t->co);
    lua_rawseti(L, scratch, ++n);
  }
  int resumed = 0;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, scratch, i);
    Task *t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (t->wait == W_NONE || t->epoch >= epoch) continue; /* already moved on */
    if (budget >= 0 && resumed > 0 && async_now() - start >= budget) break;
    if (lua_status(t->co) != LUA_YIELD) { /* someone else ran it to its end */
      task_forget(L, a, t);
      continue;
    }
    if (!task_ready(a, t, async_now())) continue;
    wait_end(a, t);
    task_resume(L, a, t, 0);
    resumed++;
  }
  for (int i = 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, scratch, i);
  }
  lua_settop(L, 1);
  a->polling = false;
  lua_pushinteger(L, a->nwaiting);
  return 1;
}

int caracal_poll(lua_State *L, double budget_seconds) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, poll_run);
  lua_pushnumber(L, budget_seconds);
  int rc;
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
    rc = (int)lua_tointeger(L, -1);
  } else { /* out of memory, most likely: the tasks themselves are protected */
    Async *a = async_peek(L);
    if (a) {
      a->polling = false;
      deliver(a, lua_isstring(L, -1) ? lua_tostring(L, -1) : "caracal_poll failed");
    }
    rc = CARACAL_ELUA;
  }
  lua_settop(L, top);
  return rc;
}

/* (f, args...) -> caracal_spawn's code */
static int spawn_run(lua_State *L) {
  Async *a = async_get(L);
  int rc;
  if (a->closed) rc = CARACAL_ECLOSED;
  else if (!lua_isfunction(L, 1)) rc = CARACAL_EINVAL;
  else rc = spawn(L, a, lua_gettop(L) - 1, false);
  lua_settop(L, 0);
  lua_pushinteger(L, rc);
  return 1;
}

int caracal_spawn(lua_State *L, int nargs) {
  int base = lua_gettop(L) - nargs; /* the function */
  lua_pushcfunction(L, spawn_run);
  lua_insert(L, base);
  if (lua_pcall(L, nargs + 1, 1, 0) != LUA_OK) {
    Async *a = async_peek(L);
    if (a) deliver(a, lua_isstring(L, -1) ? lua_tostring(L, -1) : "caracal_spawn failed");
    lua_pop(L, 1);
    return CARACAL_ELUA;
  }
  int rc = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return rc;
}

static int event_fd_run(lua_State *L) {
  Async *a = async_get(L);
  if (a->closed) {
    lua_pushinteger(L, -1);
    return 1;
  }
  if (a->epfd < 0) {
    a->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (a->epfd >= 0) {
      watch(a, a->listen_fd, EPOLLIN);
      for (Task *t = a->head; t; t = t->next)
        if (t->fd >= 0) watch(a, t->fd, t->wait == W_WRITE ? EPOLLIN | EPOLLOUT : EPOLLIN);
    }
  }
  lua_pushinteger(L, a->epfd);
  return 1;
}

int caracal_event_fd(lua_State *L) {
  lua_pushcfunction(L, event_fd_run);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    errno = ENOMEM;
    return -1;
  }
  int fd = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return fd;
}

double caracal_poll_timeout(lua_State *L) {
  Async *a = async_peek(L);
  if (!a || a->closed) return -1;
  double now = async_now(), best = -1;
  for (Task *t = a->head; t; t = t->next) {
    double d;
    switch (t->wait) {
      case W_FRAME:
        return 0;
      case W_READ:
        if (*t->slot != t->conn || !PQisBusy(t->conn->pg)) return 0; /* ready already */
        continue;
      case W_TIMER:
      case W_POOL:
        d = t->until - now;
        if (d < 0) d = 0;
        if (best < 0 || d < best) best = d;
        continue;
      default:
        continue;
    }
  }
  return best;
}

void async_close(lua_State *L) {
  Async *a = async_peek(L);
  if (a && !a->closed) {
    a->closed = true;
    /* Ask the server to stop every statement in flight first, all at
     * once; giving the connections back below then waits for each
     * cancelled statement to end and rolls back. */
    for (Task *t = a->head; t; t = t->next) {
      if ((t->wait != W_READ && t->wait != W_WRITE) || *t->slot != t->conn) continue;
      PGcancel *cancel = PQgetCancel(t->conn->pg);
      char buf[256];
      if (cancel) {
        PQcancel(cancel, buf, sizeof buf);
        PQfreeCancel(cancel);
      }
    }
    while (a->head) wait_end(a, a->head);
  }
  /* Every connection a handle of this state holds -- in tasks, in
   * sessions on the main thread, the listener -- goes back now, reset and
   * rolled back, before anything else can run. */
  lconn_release_all(L);
  if (!a) return;
  if (a->listener) {
    a->listener = NULL;
    a->listen_fd = -1;
  }
  /* Drop the tasks without running them further (their sessions'
   * __close would try to COMMIT): their connections are already back. */
  for (int uv = UV_TASKS; uv <= UV_CHANNELS; uv++) {
    if (push_uv(L, uv) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {                     /* t k v */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4);                          /* t k */
      }
    }
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  set_uv(L, UV_LISTENER);
  if (a->epfd >= 0) close(a->epfd);
  a->epfd = -1;
}

/* ---- the Lua API ------------------------------------------------------------- */

/* core.spawn(fn, ...) -> coroutine. Runs fn(...) as a task until it first
 * waits; caracal_poll / core.poll runs the rest. Errors go to
 * core.on_error's function or the host. Do not resume it yourself. */
static int core_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  Async *a = async_get(L);
  if (a->closed) return luaL_error(L, "caracal was closed in this state");
  spawn(L, a, lua_gettop(L) - 1, true);
  return 1;
}

/* core.poll([budget]) -> tasks still waiting. For Lua hosts: the same
 * step as caracal_poll. Raises when called from inside a task. */
static int core_poll(lua_State *L) {
  int rc = caracal_poll(L, luaL_optnumber(L, 1, -1));
  if (rc == CARACAL_EINVAL) return luaL_error(L, "core.poll cannot run inside a task or a poll");
  if (rc == CARACAL_ECLOSED) return luaL_error(L, "caracal was closed in this state");
  lua_pushinteger(L, rc);
  return 1;
}

/* core.set_nonblocking(on) -> the previous setting. */
static int core_set_nonblocking(lua_State *L) {
  luaL_checkany(L, 1);
  Async *a = async_get(L);
  lua_pushboolean(L, a->nonblocking);
  a->nonblocking = lua_toboolean(L, 1);
  return 1;
}

static int core_is_nonblocking(lua_State *L) {
  lua_pushboolean(L, async_get(L)->nonblocking);
  return 1;
}

/* core.in_task() -> true inside a task (where queries yield when
 * non-blocking mode is on). */
static int core_in_task(lua_State *L) {
  lua_pushboolean(L, task_of(L, L) != NULL);
  return 1;
}

/* core.pending() -> the number of tasks waiting. */
static int core_pending(lua_State *L) {
  lua_pushinteger(L, async_get(L)->nwaiting);
  return 1;
}

/* core.on_error(fn | nil): fn(err, traceback) receives errors no task
 * caught, instead of the host's hook. */
static int core_on_error(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  async_get(L);
  set_uv(L, UV_HANDLER);
  return 0;
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(L);
  CARACAL_UNUSED(status);
  CARACAL_UNUSED(ctx);
  return 0;
}

/* core.sleep(seconds): in a task, wait without blocking (0: one frame);
 * elsewhere, sleep the thread. */
static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (!(s > 0)) s = 0;
  if (async_can_yield(L)) {
    Async *a = async_get(L);
    Task *t = running_task(L);
    wait_begin(a, t, W_TIMER);
    t->until = async_now() + s;
    return lua_yieldk(L, 0, 0, sleep_k);
  }
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  return 0;
}

/* Push the pool the listener is taken from: the argument, else the
 * current connection manager's, else the host's shared pool. */
static void push_listen_pool(lua_State *L, int arg) {
  if (!lua_isnoneornil(L, arg)) {
    luaL_checkudata(L, arg, CARACAL_POOL_MT);
    lua_pushvalue(L, arg);
    return;
  }
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "caracal.db") == LUA_TTABLE &&
      lua_getfield(L, -1, "get_connection_manager") == LUA_TFUNCTION) {
    lua_call(L, 0, 1);                              /* loaded db manager */
    if (lua_istable(L, -1) && lua_getfield(L, -1, "pool") == LUA_TUSERDATA) {
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return;
    }
  }
  lua_settop(L, top);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "caracal.core") == LUA_TTABLE &&
      lua_getfield(L, -1, "shared_pool") == LUA_TUSERDATA) {
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return;
  }
  luaL_error(L, "core.listen: no pool to take the listener connection from: pass one, or "
                "initialize a connection manager first");
}

/* Send `verb "channel"` on the listener through its exec_script (which
 * yields in a task), then continue at step `next` of k. */
static int listener_command(lua_State *L, Async *a, const char *verb, int chan_idx,
                            lua_KContext next, lua_KFunction k) {
  size_t len;
  const char *channel = lua_tolstring(L, chan_idx, &len);
  char *q = PQescapeIdentifier(a->listener->pg, channel, len);
  if (!q) return luaL_error(L, "invalid channel name: %s", PQerrorMessage(a->listener->pg));
  push_uv(L, UV_LISTENER);                          /* conn */
  lua_getfield(L, -1, "exec_script");
  lua_insert(L, -2);                                /* exec_script conn */
  lua_pushfstring(L, "%s %s", verb, q);
  PQfreemem(q);
  lua_callk(L, 2, 0, next, k);
  return k(L, LUA_OK, next);
}

/* Is the listener still running a command for another task? Then wait a
 * frame (in a task) or refuse. */
static bool listener_busy(lua_State *L, Async *a) {
  if (PQtransactionStatus(a->listener->pg) != PQTRANS_ACTIVE) return false;
  if (!async_can_yield(L))
    luaL_error(L, "the listener connection is busy with another task's LISTEN; retry");
  return true;
}

enum { LISTEN_START, LISTEN_CHECKED_OUT, LISTEN_SEND, LISTEN_DONE };

static int listen_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(status);
  Async *a = async_get(L);
  switch (ctx) {
    case LISTEN_START:
      if (a->closed) return luaL_error(L, "caracal was closed in this state");
      if (!a->listener) {
        push_listen_pool(L, 3);                     /* ch fn pool? pool */
        lua_getfield(L, -1, "checkout");
        lua_insert(L, -2);
        lua_pushliteral(L, "caracal listener");
        lua_callk(L, 2, 1, LISTEN_CHECKED_OUT, listen_k);
        return listen_k(L, LUA_OK, LISTEN_CHECKED_OUT);
      }
      return listen_k(L, LUA_OK, LISTEN_SEND);
    case LISTEN_CHECKED_OUT:                        /* ch fn pool? conn */
      if (a->listener) {
        /* Another task made one while we waited for ours. */
        lconn_release_deferred(L, -1);
      } else {
        a->listener = lconn_get(L, -1);
        a->listen_fd = PQsocket(a->listener->pg);
        watch(a, a->listen_fd, EPOLLIN);
        lua_pushvalue(L, -1);
        set_uv(L, UV_LISTENER);
      }
      lua_settop(L, 3);
      return listen_k(L, LUA_OK, LISTEN_SEND);
    case LISTEN_SEND:
      if (!a->listener) return listen_k(L, LUA_OK, LISTEN_START);
      if (listener_busy(L, a)) {
        wait_begin(a, running_task(L), W_FRAME);
        return lua_yieldk(L, 0, LISTEN_SEND, listen_k);
      }
      return listener_command(L, a, "LISTEN", 1, LISTEN_DONE, listen_k);
    default:                                        /* LISTEN_DONE */
      push_uv(L, UV_CHANNELS);
      lua_pushvalue(L, 1);
      lua_pushvalue(L, 2);
      lua_rawset(L, -3);
      return 0;
  }
}

/* core.listen(channel, callback [, pool]): callback(channel, payload, pid)
 * runs as a task, from caracal_poll, for each NOTIFY on channel. The first
 * call takes a connection from pool (default: the current connection
 * manager's, else the host's shared pool) and keeps it for every channel
 * of this state; it is marked dirty, so it is reset (UNLISTEN *) when it
 * goes back. The channel name is quoted as an identifier, so it is taken
 * exactly as given (case included). Listening again replaces the callback. */
static int core_listen(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 3);
  return listen_k(L, LUA_OK, LISTEN_START);
}

static int unlisten_k(lua_State *L, int status, lua_KContext ctx) {
  CARACAL_UNUSED(status);
  Async *a = async_get(L);
  if (ctx == 1) return 0;
  if (!a->listener) return 0;
  if (listener_busy(L, a)) {
    wait_begin(a, running_task(L), W_FRAME);
    return lua_yieldk(L, 0, 0, unlisten_k);
  }
  return listener_command(L, a, "UNLISTEN", 1, 1, unlisten_k);
}

/* core.unlisten(channel) -> true when it was listened to. The last one
 * gives the listener connection back: reset now from the main thread, or,
 * in a task, parked without a round trip for the pool to reset at its
 * next checkout. */
static int core_unlisten(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_settop(L, 1);
  Async *a = async_get(L);
  push_uv(L, UV_CHANNELS);                          /* ch channels */
  lua_pushvalue(L, 1);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pushnil(L);
  bool last = lua_next(L, -2) == 0;
  lua_settop(L, 1);
  if (last) {
    drop_listener(L, a, !async_can_yield(L));
    lua_pushboolean(L, 1);
    return 1;
  }
  return unlisten_k(L, LUA_OK, 0);
}

static const luaL_Reg async_funcs[] = {
  {"spawn", core_spawn},
  {"poll", core_poll},
  {"set_nonblocking", core_set_nonblocking},
  {"is_nonblocking", core_is_nonblocking},
  {"in_task", core_in_task},
  {"pending", core_pending},
  {"on_error", core_on_error},
  {"sleep", core_sleep},
  {"listen", core_listen},
  {"unlisten", core_unlisten},
  {NULL, NULL}
};

void async_open(lua_State *L) {
  async_get(L); /* with the host's options, before any task */
  luaL_setfuncs(L, async_funcs, 0);
}
