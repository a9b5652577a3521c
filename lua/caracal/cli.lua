--- The `caracal` command line. `main(argv)` returns the exit code:
-- 0 success, 1 failure, 2 usage error.
-- @module caracal.cli
local core = require "caracal.core"
local db = require "caracal.db"

local M = {}

M.usage = [==[
Usage: caracal [OPTIONS] [SCRIPT [ARGS...]]
       caracal [OPTIONS] run FILE... [-- ARGS...]
       caracal [OPTIONS] -e CODE
       caracal COMMAND [--help]

Runs Lua scripts with a PostgreSQL data layer in scope: `caracal` (the
API), the models, `db` (a connection manager, connected on first use)
and `arg`. With no script on a terminal, starts the REPL; with stdin not
a terminal, the script is read from stdin.

Options:
  -e CODE              run CODE (may be given several times)
  --url URL            database URL (overrides CARACAL_DATABASE_URL)
  --config FILE        a Lua config file returning DatabaseConfig settings
  --single-transaction run all scripts in one transaction (with `run`)
  --read-only          REPL and scripts use read-only transactions
  --sandbox            run scripts in the sandbox: database and caracal API
                       only (no io, os.execute, require, ...), text chunks
                       only, an instruction budget (caracal.sandbox)
  --budget N           the sandbox's instruction budget (default 100000000)
  --yes, -y            do not ask before destructive commands
  --help               this help
  --version            print the version

Commands:
  run FILE...          run scripts in order
  db COMMAND           schema migrations (caracal db --help)
  health               exit 0 when the database answers, 1 otherwise
  status               database URL (password masked), server, pool,
                       schema revision
  local start|stop|status|destroy
                       the local cluster in .caracal/ (CARACAL_HOME)

Admin tasks (each has --help):
  principal add|list|show     policy set|list
  ledger record|list|spending|import
  snapshot create|list|show|prune
  mandate issue|validate|revoke|list|show
  merkle batch|proof|verify|backfill
  partition create|list        the ledgers' monthly partitions

Without --url, CARACAL_DATABASE_URL or a config file, Caracal starts and
uses a local cluster in ./.caracal (created on first use).
]==]

local function stderr(fmt, ...)
  io.stderr:write(string.format(fmt, ...))
end

-- Parse the global options; returns opts, the rest of argv.
local function parse(argv)
  local opts = { code = {} }
  local rest = {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "-e" then
      if not argv[i + 1] then return nil, "option -e needs an argument" end
      opts.code[#opts.code + 1] = argv[i + 1]
      i = i + 2
    elseif a == "--url" or a == "--config" then
      local v = argv[i + 1]
      if not v then return nil, "option " .. a .. " needs an argument" end
      opts[a:sub(3)] = v
      i = i + 2
    elseif a:match("^%-%-url=") then opts.url = a:sub(7); i = i + 1
    elseif a:match("^%-%-config=") then opts.config = a:sub(10); i = i + 1
    elseif a == "--single-transaction" then opts.single = true; i = i + 1
    elseif a == "--read-only" then opts.read_only = true; i = i + 1
    elseif a == "--sandbox" then opts.sandbox = true; i = i + 1
    elseif a == "--budget" or a:match("^%-%-budget=") then
      local v = a == "--budget" and argv[i + 1] or a:sub(10)
      local n = math.tointeger(tonumber(v or ""))
      if not n or n < 1 then return nil, "option --budget needs a number of instructions >= 1" end
      opts.sandbox, opts.budget = true, n
      i = i + (a == "--budget" and 2 or 1)
    elseif a == "--yes" or a == "-y" then opts.yes = true; i = i + 1
    elseif a == "--help" or a == "-h" then opts.help = true; i = i + 1
    elseif a == "--version" or a == "-v" then opts.version = true; i = i + 1
    elseif a == "-" then rest[#rest + 1] = a; i = i + 1
    elseif a:sub(1, 1) == "-" and #rest == 0 then
      return nil, "unknown option " .. a
    else
      for j = i, #argv do rest[#rest + 1] = argv[j] end
      break
    end
  end
  return opts, rest
end

--- The manager for this command line's options (made on first use).
function M.manager(opts)
  if not M._manager then
    if opts.url then
      M._manager = db.initialize_connection_manager({ url = opts.url })
    elseif opts.config then
      M._manager = db.initialize_connection_manager(nil, { config_file = opts.config })
    else
      M._manager = db.initialize_connection_manager()
    end
    M._manager.readonly = opts.read_only or false
  end
  return M._manager
end

-- The globals a script sees: the standard ones, `caracal`, the models
-- (`Principal{...}` ...), and `db`, a manager made when a script first
-- touches it (a script that does not use the database does not start one).
local function script_env(opts, args)
  local models = require "caracal.models"
  local env = setmetatable({ arg = args }, {
    __index = function(t, k)
      if k == "db" then
        local m = M.manager(opts)
        rawset(t, "db", m)
        return m
      end
      local v = _G[k]
      if v == nil and type(k) == "string" then v = rawget(models, k) end
      return v
    end,
  })
  return env
end

local function load_chunk(src, name, env)
  -- Text only: a binary chunk can crash the interpreter.
  local fn, err = load(src, name, "t", env)
  if not fn then return nil, err end
  return fn
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local src = f:read("a")
  f:close()
  if src:sub(1, 1) == "#" then src = "--" .. src end -- shebang line
  return src
end

local function run_chunks(opts, chunks, args)
  if opts.sandbox then
    local ok, err = require("caracal.sandbox").run_chunks(chunks, args, {
      manager = function() return M.manager(opts) end, single = opts.single, budget = opts.budget })
    if not ok then
      stderr("%s\n", M.format_error(err))
      return 1
    end
    return 0
  end
  local env = script_env(opts, args)
  _G.arg = args -- modules read the global, as under lua.c
  local fns = {}
  for i, c in ipairs(chunks) do
    local fn, err = load_chunk(c.src, c.name, env)
    if not fn then
      stderr("caracal: %s\n", err)
      return 1
    end
    fns[i] = fn
  end
  local function run_all()
    for _, fn in ipairs(fns) do fn(table.unpack(args)) end
  end
  local ok, err
  if opts.single then
    local manager = M.manager(opts)
    local session = manager:session()
    env.session = session
    ok, err = xpcall(function() session:session_scope(function() run_all() end) end, M.traceback)
    session:close()
  else
    ok, err = xpcall(run_all, M.traceback)
  end
  if not ok then
    stderr("%s\n", M.format_error(err))
    return 1
  end
  return 0
end

--- Message handler: structured errors stay as they are.
function M.traceback(err)
  if core.is_error(err) then return err end
  return debug.traceback(tostring(err), 2)
end

--- One readable block for any error value.
function M.format_error(err)
  if core.is_error(err) then return tostring(err) end
  return tostring(err)
end

local commands = {}

-- The manager for opts, or nil after printing why it cannot be made.
local function manager_or_report(opts)
  local ok, manager = pcall(M.manager, opts)
  if ok then return manager end
  stderr("caracal: %s\n", M.format_error(manager))
  return nil
end

function commands.health(opts, args)
  if args[1] == "--help" then
    io.write("Usage: caracal health\nExit 0 when the database answers SELECT 1, 1 otherwise.\n")
    return 0
  end
  local manager = manager_or_report(opts)
  if not manager then return 1 end
  local healthy = manager:health_check()
  io.write(healthy and "ok\n" or "unhealthy\n")
  return healthy and 0 or 1
end

function commands.status(opts, args)
  if args[1] == "--help" then
    io.write("Usage: caracal status [--json]\nDatabase URL (password masked), server version, pool status,\n" ..
             "schema revision and pending migrations. Exit 1 when the database cannot be reached.\n")
    return 0
  end
  local manager = manager_or_report(opts)
  if not manager then return 1 end
  local info = { url = manager.config:masked_url() }
  local ok, err = pcall(function()
    manager:session_scope(function(s)
      info.server_version = s:scalar("show server_version")
    end)
  end)
  info.healthy = ok
  if not ok then info.error = tostring(err) end
  if ok then
    local mok, cur = pcall(require("caracal.migrate").current, manager)
    if mok then
      info.schema = { revision = cur.revision, head = cur.head, pending = cur.pending, dirty = cur.dirty }
    else
      info.schema = { error = tostring(cur) }
    end
  end
  info.pool = manager:get_pool_status()
  if args[1] == "--json" then
    io.write(core.json_encode(info), "\n")
  else
    io.write(string.format("database: %s\n", info.url))
    io.write(string.format("server:   %s\n", info.server_version or ("unreachable: " .. tostring(info.error))))
    local p = info.pool
    io.write(string.format("pool:     size %d, checked in %d, checked out %d, overflow %d, total %d\n",
      p.size, p.checked_in, p.checked_out, p.overflow, p.total))
    local sc = info.schema
    if sc and sc.error then
      io.write("schema:   ", sc.error, "\n")
    elseif sc then
      io.write(string.format("schema:   revision %s (head %s), %d pending%s\n", sc.revision or "none",
        sc.head or "none", sc.pending or 0, sc.dirty and (", dirty at " .. sc.dirty) or ""))
    end
  end
  return ok and 0 or 1
end

commands["local"] = function(_, args)
  return require("caracal.localdb").main(args)
end

--- What commands and tasks get from the command line: the manager (made
-- on first use), terminal checks, and confirmation of destructive steps.
function M.context(opts)
  local ctx = { yes = opts.yes or false, dir = opts.dir }
  function ctx.manager() return M.manager(opts) end
  function ctx.isatty(which)
    if which == 0 then which = "stdin" elseif which == 1 then which = "stdout" end
    local ok, host = pcall(require, "caracal.host")
    return ok and host.isatty and host.isatty(which or "stdin") or false
  end
  function ctx.read_line() return io.read("l") end
  function ctx.confirm(question)
    if ctx.yes then return true end
    if not ctx.isatty("stdin") then return false end
    io.stderr:write(question, " [y/N] ")
    io.stderr:flush()
    local answer = io.read("l") or ""
    return answer:match("^%s*[yY]") ~= nil
  end
  return ctx
end

function commands.db(opts, args)
  local ctx = M.context(opts)
  -- Ctrl-C during a run stops after the current revision (which commits
  -- or rolls back whole) and releases the runner's lock.
  local ok, host = pcall(require, "caracal.host")
  if ok and host.defer_interrupts then
    host.defer_interrupts()
    ctx.should_stop = host.interrupted
  end
  return require("caracal.migrate").main(args, ctx)
end

-- Admin tasks: lua/caracal/tasks/NAME.lua, each `main(argv, ctx)`.
M.tasks = { "principal", "policy", "ledger", "snapshot", "mandate", "merkle", "partition" }
for _, name in ipairs(M.tasks) do
  commands[name] = function(opts, args)
    local ok, mod = pcall(require, "caracal.tasks." .. name)
    if not ok then
      stderr("caracal: the %s task is not available: %s\n", name, tostring(mod))
      return 1
    end
    return mod.main(args, M.context(opts))
  end
end

function commands.run(opts, args)
  if args[1] == "--help" then
    io.write("Usage: caracal run [--single-transaction] [--sandbox] FILE... [-- ARGS...]\n" ..
             "Runs the scripts in order, each with `arg` set to ARGS.\n")
    return 0
  end
  local files, sargs, after = {}, {}, false
  for _, a in ipairs(args) do
    if after then sargs[#sargs + 1] = a
    elseif a == "--" then after = true
    elseif a == "--single-transaction" then opts.single = true
    elseif a == "--sandbox" then opts.sandbox = true
    else files[#files + 1] = a end
  end
  if #files == 0 then
    stderr("caracal: run needs at least one FILE\n")
    return 2
  end
  local chunks = {}
  for _, f in ipairs(files) do
    local src, err = read_file(f)
    if not src then
      stderr("caracal: cannot read %s\n", err)
      return 1
    end
    chunks[#chunks + 1] = { src = src, name = "@" .. f }
  end
  return run_chunks(opts, chunks, sargs)
end

--- Entry point. argv[0] is the program name.
function M.main(argv)
  local opts, rest = parse(argv)
  if not opts then
    stderr("caracal: %s\nTry 'caracal --help'.\n", rest)
    return 2
  end
  if opts.help and #rest == 0 then io.write(M.usage) return 0 end
  if opts.version then io.write("caracal ", core.version, "\n") return 0 end
  local cmd = rest[1]
  if cmd and commands[cmd] then
    local args = { table.unpack(rest, 2) }
    if opts.help then table.insert(args, 1, "--help") end
    return commands[cmd](opts, args)
  end
  if #opts.code > 0 then
    local chunks = {}
    for i, c in ipairs(opts.code) do chunks[i] = { src = c, name = "=(command line)" } end
    return run_chunks(opts, chunks, rest)
  end
  if cmd == "-" or (not cmd) then
    if not cmd and M.isatty and M.isatty() and M.repl then
      if opts.sandbox then stderr("caracal: --sandbox runs scripts; the REPL is not sandboxed\n") return 2 end
      return M.repl(opts)
    end
    local src = io.read("a") or ""
    return run_chunks(opts, { { src = src, name = "=stdin" } }, { table.unpack(rest, 2) })
  end
  local src, err = read_file(cmd)
  if not src then
    stderr("caracal: cannot open %s\n", err)
    return 1
  end
  -- As lua.c does: arg[0] is the script, arg[1..] its arguments.
  local args = { table.unpack(rest, 2) }
  args[0] = cmd
  return run_chunks(opts, { { src = src, name = "@" .. cmd } }, args)
end

return M
