--- A sandbox for scripts that should only touch the database.
--
--    local sandbox = require "caracal.sandbox"
--    local n = sandbox.run([[
--      return db:session_scope(function(s) return s:scalar("select count(*) from principals") end)
--    ]], "=count", { env = { db = manager }, instruction_budget = 1e7 })
--
-- `caracal --sandbox SCRIPT` (and `caracal run --sandbox FILE...`,
-- `caracal --sandbox -e CODE`) run scripts this way; `--budget N` sets the
-- instruction budget.
--
-- What a sandboxed script sees (an allow-list, after Redis's scripting
-- sandbox; reliability.md S7): `db` (a connection manager) and `arg`, the
-- caracal value API and models (`caracal.Decimal`, `Principal{...}`, ...),
-- the base functions that cannot reach outside (assert, error, ipairs,
-- next, pairs, pcall, xpcall, select, tonumber, tostring, type, rawequal,
-- rawlen, rawget, print, setmetatable, getmetatable, load, collectgarbage
-- "count"), and copies of string, table, math, utf8, coroutine, with
-- os.time, os.clock, os.date and os.difftime.
--
-- What it does not see, each refused with an error naming it: io, os.execute,
-- os.getenv, os.remove and the rest of os, require, package, loadfile,
-- dofile, debug, rawset, string.dump, string.pack, and the parts of the
-- caracal API that open new connections (DatabaseConfig,
-- initialize_connection_manager, caracal.core).
--
-- The rules:
--  * chunks load in text mode only ("t"): a binary chunk can crash the
--    interpreter. `load` inside the sandbox is text-only too and loads into
--    the sandbox's environment;
--  * the environment is protected: its built-in names cannot be replaced
--    (`_G = {}`, `print = nil` and `caracal = ...` raise), its metatable can
--    neither be read nor changed, and rawset is not there. Scripts may make
--    their own globals;
--  * getmetatable shows only metatables the script set itself, so a script
--    cannot reach the string metatable or Caracal's own classes;
--    setmetatable refuses `__gc` (a finalizer would run after the sandbox
--    returned, outside its budget);
--  * an instruction budget: a count hook stops the script when it has run
--    that many VM instructions. pcall cannot swallow it: once the budget is
--    spent, the hook raises again at every instruction of script code
--    (in every coroutine the script made) until `run` returns. Caracal's
--    own Lua code is let finish what it is doing (a scope rolls back, a
--    connection goes back to the pool) before the error reaches the script
--    again;
--  * a memory limit (best effort: the hook compares collectgarbage("count")
--    with the limit, and string.rep refuses results over it). A Lua-level
--    allocator cap is not possible from Lua; hosts that need a hard cap
--    make the state with their own allocator, or run `caracal --sandbox`
--    under `ulimit -v`;
--  * the manager the script gets holds no password in Lua (see `scrub`).
--
-- Not covered: C functions run to completion once called, so a pattern
-- match with catastrophic backtracking, or a gsub whose result is huge,
-- is bounded only by the process's own limits. Objects shared with the
-- script (`db`, a session, the models, values it returns) are the real
-- ones: the script may change their fields, and a host that calls into
-- them after the run runs that code without a budget. Error values are
-- made safe (`safe_error`); other returned values are the host's to
-- treat as untrusted.
-- @module caracal.sandbox
local core = require "caracal.core"

local M = {}

--- Defaults: instruction budget (about a second of plain Lua), hook step,
-- and the largest string string.rep may make without a memory_limit.
M.defaults = { instruction_budget = 100000000, step = 1000, max_string = 64 * 1024 * 1024 }

local BLOCKED = {
  io = "io", require = "require", package = "package", loadfile = "loadfile",
  dofile = "dofile", debug = "debug", rawset = "rawset", module = "module",
  loadstring = "loadstring", setfenv = "setfenv", getfenv = "getfenv", newproxy = "newproxy",
}

local WHY = "scripts in the sandbox may use the database (db), the caracal API and the standard " ..
            "string, table, math, utf8 and coroutine functions, with os.time, os.clock and os.date"

-- The script's "chunk:line" that called into the sandbox's guards.
local function script_where()
  for level = 3, 12 do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    if info.what ~= "C" and not info.source:find("caracal/sandbox%.lua$") then
      return info.short_src .. ":" .. (info.currentline or 0)
    end
  end
end

local function blocked(name)
  error(core.Error { message = string.format("sandbox: %s is not available (%s)", name, WHY),
                     kind = "sandbox", where = script_where() }, 0)
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- A read-only view of `t` (a private table): reads go through, writes
-- raise, the metatable is hidden. `deny` names fields that raise on read.
local function readonly(name, t, deny)
  return setmetatable({}, {
    __index = function(_, k)
      local v = t[k]
      if v == nil and deny and deny[k] then blocked(name .. "." .. tostring(k)) end
      return v
    end,
    __newindex = function(_, k)
      error(string.format("sandbox: %s is read-only (cannot set %s.%s)", name, name, tostring(k)), 2)
    end,
    __pairs = function() return next, t, nil end,
    __metatable = "sandbox: protected",
  })
end

--- A copy of a manager's configuration with the password replaced by
-- "***" (it still prints as `user:***@host`). The pool already holds its
-- own copy of the connection keywords, in C, out of Lua's reach.
-- @tparam ConnectionManager manager
-- @treturn ConnectionManager the same manager, scrubbed
function M.scrub(manager)
  local cfg = manager and manager.config
  if type(cfg) ~= "table" then return manager end
  local c = setmetatable({}, getmetatable(cfg))
  for k, v in pairs(cfg) do c[k] = v end
  if type(c.password) == "string" and c.password ~= "" then c.password = "***" end
  if type(c.libpq) == "table" then
    c.libpq = copy(c.libpq)
    if c.libpq.password then c.libpq.password = "***" end
  end
  manager.config = c
  return manager
end

-- The budget's bookkeeping and hook, shared by every thread of one run.
local function new_context(opts)
  local ctx = {
    budget = opts.instruction_budget,
    memory_limit = opts.memory_limit,
    used = 0,
    untrusted = {},                      -- chunk names of script code
    threads = setmetatable({}, { __mode = "k" }),
    tripped = nil,                       -- the error to raise once spent
  }
  if ctx.budget == nil then ctx.budget = M.defaults.instruction_budget end
  if ctx.budget == false then ctx.budget = nil end
  if ctx.budget ~= nil and (type(ctx.budget) ~= "number" or ctx.budget < 1) then
    error("sandbox: instruction_budget must be a number >= 1 (or false), got " .. tostring(ctx.budget), 3)
  end
  if ctx.memory_limit ~= nil and (type(ctx.memory_limit) ~= "number" or ctx.memory_limit < 1) then
    error("sandbox: memory_limit must be a number of bytes >= 1, got " .. tostring(ctx.memory_limit), 3)
  end
  ctx.step = math.max(1, math.min(M.defaults.step, ctx.budget or M.defaults.step))
  ctx.mem0 = collectgarbage("count") * 1024

  local function trip(err)
    if ctx.tripped then return end
    ctx.tripped = err
    -- From now on the hook runs at every instruction, in every thread.
    for co in pairs(ctx.threads) do
      if coroutine.status(co) ~= "dead" then debug.sethook(co, ctx.hook, "", 1) end
    end
  end

  function ctx.hook()
    if not ctx.tripped then
      ctx.used = ctx.used + ctx.step
      if ctx.budget and ctx.used >= ctx.budget then
        trip(core.Error { kind = "budget", message = string.format(
          "sandbox: the script used its instruction budget of %d and was stopped", math.tointeger(ctx.budget) or ctx.budget) })
      elseif ctx.memory_limit and collectgarbage("count") * 1024 - ctx.mem0 > ctx.memory_limit then
        trip(core.Error { kind = "memory", message = string.format(
          "sandbox: not enough memory: the script went over its memory limit of %d bytes", math.tointeger(ctx.memory_limit) or ctx.memory_limit) })
      end
      if not ctx.tripped then return end
    end
    -- Raise only in script code: Caracal's own code finishes its step
    -- (a rollback, a checkin) and the error comes back at the script's
    -- next instruction.
    local info = debug.getinfo(2, "S")
    if info and ctx.untrusted[info.source] then error(ctx.tripped, 0) end
  end

  -- Put the hook on a thread (the one running the chunk, or a coroutine
  -- the script made).
  function ctx.attach(co)
    ctx.threads[co] = true
    if ctx.budget or ctx.memory_limit then
      debug.sethook(co, ctx.hook, "", ctx.tripped and 1 or ctx.step)
    end
    return co
  end
  return ctx
end

-- string functions with the bombs defused; `limit` bounds string.rep.
local function safe_string(limit)
  local s = copy(string)
  s.dump, s.pack, s.packsize = nil, nil, nil
  local rep = string.rep
  s.rep = function(str, n, sep)
    str = tostring(str)
    local count = math.tointeger(n) or math.floor(tonumber(n) or 0)
    local size = #str * math.max(count, 0) + #(sep or "") * math.max(count - 1, 0)
    if size > limit then
      error(core.Error { kind = "memory", message = string.format(
        "sandbox: not enough memory: string.rep would make %.0f bytes (limit %d)", size, limit) }, 2)
    end
    return rep(str, n, sep)
  end
  return setmetatable(s, { __index = function(_, k)
    if k == "dump" or k == "pack" or k == "packsize" then blocked("string." .. k) end
  end })
end

--- Make a sandbox environment.
-- @tparam[opt] table opts `env` (extra globals: name -> value), `lazy`
-- (name -> function making the value on first use, like `db`),
-- `memory_limit`; and the context made by `run`
-- @treturn table env
function M.environment(opts, ctx)
  opts = opts or {}
  ctx = ctx or new_context({ instruction_budget = false })
  local limit = opts.memory_limit or M.defaults.max_string
  local strings = safe_string(limit)
  ctx.string_methods = safe_string(limit) -- private: what ("x"):rep uses during the run

  local env, builtins, lazy = {}, {}, {}
  local script_mts = setmetatable({}, { __mode = "k" })

  local function get_db()
    local v = builtins.db
    if v == nil and lazy.db then v = lazy.db() end
    return v
  end

  local api = {}
  for _, name in ipairs({ "Decimal", "is_decimal", "Instant", "is_instant", "utcnow", "instant_from_micros",
                          "uuid4", "uuid", "is_uuid", "null", "json_encode", "json_decode", "json_array",
                          "is_json_array", "Error", "is_error" }) do
    api[name] = core[name]
  end
  api.version = core.version
  local models = require "caracal.models"
  api.models = models
  for _, name in ipairs(models.names()) do api[name] = models[name] end
  api.get_connection_manager = function() return get_db() end
  api.check_schema_version_on_startup = function(manager, o)
    return require("caracal.migrate").check_schema_version_on_startup(manager or get_db(), o)
  end

  local function sandbox_load(chunk, name, mode, e)
    if mode ~= nil and mode ~= "t" then
      return nil, "sandbox: only text chunks can be loaded (mode 't')"
    end
    if type(chunk) == "string" and chunk:sub(1, 1) == "\27" then
      return nil, "sandbox: attempt to load a binary chunk (only text chunks are allowed)"
    end
    name = "=(sandbox load)"
    ctx.untrusted[name] = true
    return load(chunk, name, "t", e == nil and env or e)
  end

  local real_setmetatable, real_getmetatable = setmetatable, getmetatable
  local function sandbox_setmetatable(t, mt)
    if type(t) ~= "table" then
      error("bad argument #1 to 'setmetatable' (table expected, got " .. type(t) .. ")", 2)
    end
    if t == env then error("sandbox: the environment's metatable cannot be changed", 2) end
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("sandbox: __gc metamethods are not allowed (a finalizer would run outside the sandbox)", 2)
    end
    if type(mt) == "table" then script_mts[mt] = true end
    return real_setmetatable(t, mt)
  end
  local function sandbox_getmetatable(v)
    local mt = real_getmetatable(v)
    if mt == nil then return nil end
    if type(mt) == "table" and script_mts[mt] then return mt end
    if type(v) == "table" and type(mt) ~= "table" then return mt end -- a __metatable value
    return nil
  end
  local function sandbox_collectgarbage(what, ...)
    what = what or "collect"
    if what == "count" or what == "collect" or what == "step" or what == "isrunning" then
      return collectgarbage(what, ...)
    end
    error("sandbox: collectgarbage(\"" .. tostring(what) .. "\") is not available", 2)
  end

  local co = copy(coroutine)
  co.create = function(f) return ctx.attach(coroutine.create(f)) end
  co.wrap = function(f)
    local thread = ctx.attach(coroutine.create(f))
    return function(...)
      local r = table.pack(coroutine.resume(thread, ...))
      if r[1] then return table.unpack(r, 2, r.n) end
      error(r[2], 0)
    end
  end

  for _, name in ipairs({ "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
                          "tonumber", "tostring", "type", "rawequal", "rawlen", "rawget", "print" }) do
    builtins[name] = _G[name]
  end
  -- Lua runs a message handler with hooks off when the error came from a
  -- hook (luaD_pcall restores them only after the handler): once the
  -- budget is spent the script's handler must not run at all.
  builtins.xpcall = function(f, handler, ...)
    if type(handler) ~= "function" then
      error("bad argument #2 to 'xpcall' (function expected, got " .. type(handler) .. ")", 2)
    end
    return xpcall(f, function(e)
      if ctx.tripped then return e end
      return handler(e)
    end, ...)
  end
  builtins._VERSION = _VERSION
  builtins.setmetatable = sandbox_setmetatable
  builtins.getmetatable = sandbox_getmetatable
  builtins.collectgarbage = sandbox_collectgarbage
  builtins.load = sandbox_load
  builtins.string = strings
  builtins.table = copy(table)
  builtins.math = copy(math)
  builtins.utf8 = copy(utf8)
  builtins.coroutine = co
  builtins.os = readonly("os", { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime },
    { execute = true, getenv = true, remove = true, rename = true, exit = true, tmpname = true,
      setlocale = true })
  builtins.caracal = readonly("caracal", api, { core = true, DatabaseConfig = true,
    initialize_connection_manager = true, close_connection_manager = true })
  for _, name in ipairs(models.names()) do builtins[name] = models[name] end
  builtins._G = env
  for k, v in pairs(opts.env or {}) do builtins[k] = v end
  for k, f in pairs(opts.lazy or {}) do lazy[k] = f end

  real_setmetatable(env, {
    __index = function(_, k)
      local v = builtins[k]
      if v ~= nil then return v end
      if lazy[k] then
        v = lazy[k]()
        builtins[k] = v
        return v
      end
      if BLOCKED[k] then blocked(BLOCKED[k]) end
      return nil
    end,
    __newindex = function(t, k, v)
      if builtins[k] ~= nil or lazy[k] or BLOCKED[k] then
        error(string.format("sandbox: the global '%s' is protected and cannot be replaced", tostring(k)), 2)
      end
      rawset(t, k, v)
    end,
    __metatable = "sandbox: protected",
  })
  return env
end

--- Run a chunk of Lua text in the sandbox and return what it returns.
-- @tparam string chunk_text the script (text; a binary chunk is refused)
-- @tparam[opt] string name chunk name ("@file.lua", "=stdin")
-- @tparam[opt] table opts `env` (extra globals), `lazy`, `args` (passed
-- to the chunk as `...`), `instruction_budget` (VM instructions; default
-- `defaults.instruction_budget`; false: none), `memory_limit` (bytes, best
-- effort), `traceback` (add a traceback to non-structured errors)
-- @return the chunk's results
-- @raise the script's error; a spent budget raises a caracal.Error with
-- kind "budget" (a memory limit: kind "memory")
function M.run(chunk_text, name, opts)
  opts = opts or {}
  if type(chunk_text) ~= "string" then
    error("bad argument #1 to 'run' (string expected, got " .. type(chunk_text) .. ")", 2)
  end
  name = name or "=(sandbox)"
  local ctx = new_context(opts)
  local env = M.environment(opts, ctx)
  if chunk_text:sub(1, 1) == "\27" then
    error(core.Error { kind = "sandbox", message = "sandbox: " .. name:gsub("^[@=]", "") ..
      " is a binary chunk; only Lua text can be loaded" }, 0)
  end
  local fn, err = load(chunk_text, name, "t", env)
  if not fn then error(err, 0) end
  ctx.untrusted[name] = true

  -- The string metatable is shared by the whole state: during the run its
  -- methods are the sandbox's (no dump, a bounded rep), restored after.
  local smt = getmetatable("")
  local saved_index = smt.__index
  local saved_hook = table.pack(debug.gethook())
  smt.__index = ctx.string_methods
  local main = coroutine.running()
  ctx.attach(main)
  local handler = opts.traceback and function(e)
    if core.is_error(e) or type(e) ~= "string" then return e end
    return debug.traceback(e, 2)
  end or function(e) return e end
  local res = table.pack(xpcall(fn, handler, table.unpack(opts.args or {}, 1, opts.args and opts.args.n or nil)))
  if type(saved_hook[1]) == "function" then
    debug.sethook(saved_hook[1], saved_hook[2], saved_hook[3])
  else
    debug.sethook()
  end
  for co in pairs(ctx.threads) do
    if co ~= main and coroutine.status(co) ~= "dead" then debug.sethook(co) end
  end
  smt.__index = saved_index
  if not res[1] then error(M.safe_error(res[2]), 0) end
  return table.unpack(res, 2, res.n)
end

--- An error value that is safe to handle outside the sandbox: strings and
-- caracal.Error values as they are, anything else (a table or userdata
-- whose metamethods are the script's and would run without a budget) as
-- Lua's own "(error object is a X value)".
function M.safe_error(e)
  if type(e) == "string" or core.is_error(e) or type(e) == "nil" or type(e) == "number"
     or type(e) == "boolean" then
    return e
  end
  return string.format("(error object is a %s value)", type(e))
end

--- The command line's sandbox mode: run chunks `{src=, name=}` in order
-- in one sandbox environment each, with `arg` and a lazily made, scrubbed
-- `db`. With `opts.single`, all of them run in one transaction (the
-- scope is opened outside the sandbox; scripts see it as `session`).
-- @tparam table chunks
-- @tparam table args
-- @tparam table opts `manager` (a function returning the manager),
-- `single`, `budget`, `memory_limit`
-- @treturn boolean ok
-- @return the error
function M.run_chunks(chunks, args, opts)
  local scrubbed
  local function manager()
    if not scrubbed then scrubbed = M.scrub(opts.manager()) end
    return scrubbed
  end
  local function run_all(session)
    for _, c in ipairs(chunks) do
      M.run(c.src, c.name, {
        env = { arg = args, session = session },
        lazy = { db = manager },
        args = table.pack(table.unpack(args)),
        instruction_budget = opts.budget,
        memory_limit = opts.memory_limit,
        traceback = true,
      })
    end
  end
  if opts.single then
    -- The script gets the session: call the class's methods, not fields
    -- the script could have planted on the instance.
    local Session = require("caracal.db").Session
    local m = manager()
    local s = m:session()
    local ok, err = pcall(Session.session_scope, s, function(session) run_all(session) end)
    Session.close(s)
    return ok, M.safe_error(err)
  end
  return pcall(run_all)
end

return M
