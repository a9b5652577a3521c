--- `caracal db COMMAND`: the migration runner's command line.
--
-- `main(args, ctx)` takes the words after `db` and returns the exit code:
-- 0 success, 1 failure (for `check`: not up to date), 2 usage error.
-- Results go to stdout, errors to stderr as one block. `ctx` (optional):
-- `manager()` returns the ConnectionManager (made on first call; never
-- called for `--sql`, `heads`, `revision` or help), `dir` (the migrations
-- folder when --dir is not given), `isatty(fd)` (fd 0 or 1),
-- `read_line()` (the answer to the downgrade prompt), `should_stop()`
-- (true after SIGINT: upgrade and downgrade stop before the next revision). `--url` and
-- `--config` given after `db` are read here and win over `ctx.manager`;
-- with neither and no `ctx.manager`, the manager is made as `caracal`
-- makes it (CARACAL_DATABASE_URL, config file, local cluster).
-- @module caracal.migrate.cli
local core = require "caracal.core"
local migrate = require "caracal.migrate"

local M = {}

M.usage = [==[
Usage: caracal db COMMAND [ARGS] [OPTIONS]

Schema migrations: the Lua scripts in the migrations folder, applied in
order, each in its own transaction, under an advisory lock.

Commands:
  current               the database's revision
  history [-v]          every revision, applied or pending
  heads                 the newest revision of the scripts (exit 1 if several)
  check                 exit 0 when up to date: nothing pending, no edited
                        script, not dirty; 1 otherwise
  upgrade TARGET        apply revisions up to TARGET
  downgrade TARGET      revert revisions down to TARGET (asks first)
  stamp REVISION        record REVISION as current without running scripts
  force REVISION        the same, to clear the dirty mark a failed
                        non-transactional revision leaves
  accept REVISION -m R  accept an applied script's edit (audited)
  revision -m MESSAGE   write a new migration file revising the head

Targets: head, base, a revision id or unique prefix, +N, -N;
with --sql: TO or FROM:TO (downgrade needs FROM:TO).

Options:
  --dir DIR               the migrations folder (default $CARACAL_MIGRATIONS_DIR,
                          else the one Caracal was built with)
  --url URL, --config FILE  the database (as for `caracal`)
  --lock-timeout SECONDS  how long to wait for another runner (default 60)
  --ddl-lock-timeout V    each revision's lock_timeout (default 10s)
  --statement-timeout V   each revision's statement_timeout (default: the server's)
  --sql                   print the SQL instead of running it; no connection
  --yes, -y               do not ask before a downgrade
  --destructive           let a downgrade drop tables that hold rows
  --json                  JSON output (current, history, heads, check)
  -v, --verbose           more detail (history)
  -m, --message TEXT      the message (revision, accept)
  --help                  this help; `caracal db COMMAND --help` for one

Exit status: 0 success, 1 failure, 2 usage error.
]==]

M.command_usage = {
  current = "Usage: caracal db current [--json]\nThe database's revision, the head, and how many revisions are pending.\n",
  history = "Usage: caracal db history [-v] [--json]\nEvery revision, base first: applied (when, by whom, how long), pending,\ndirty, or edited since applied. -v adds files, checksums and links.\n",
  heads = "Usage: caracal db heads [--json]\nThe newest revision of the scripts. Exit 1 when there are several (two\nscripts revise the same revision): for CI. Needs no database.\n",
  check = "Usage: caracal db check [--json]\nExit 0 when the database is at head, no applied script was edited and it\nis not dirty; otherwise print why and exit 1.\n",
  upgrade = "Usage: caracal db upgrade TARGET [--sql] [--lock-timeout S]\nApply revisions up to TARGET (head, an id or prefix, +N). Each runs in its\nown transaction; a failure rolls that revision back and stops.\nWith --sql, print the SQL (TARGET or FROM:TO) and touch no database.\n",
  downgrade = "Usage: caracal db downgrade TARGET [--yes] [--destructive] [--sql FROM:TO]\nRevert revisions down to TARGET (base, an id or prefix, -N). Asks first\non a terminal; elsewhere needs --yes. A revision whose down drops tables\nholding rows is refused without --destructive.\n",
  stamp = "Usage: caracal db stamp REVISION\nRecord REVISION (or base, head) as the database's revision without running\nany script, e.g. for a database whose schema is known to be at it.\n",
  force = "Usage: caracal db force REVISION\nLike stamp: after a non-transactional revision failed halfway and was\nfinished or undone by hand, record where the schema is and clear the\ndirty mark.\n",
  accept = "Usage: caracal db accept REVISION -m REASON\nAn applied script was edited on purpose: store its new checksum and text,\nand record who accepted it, when and why (the old checksum is kept).\n",
  revision = "Usage: caracal db revision -m MESSAGE\nWrite migrations/NNNN_<id>_<message>.lua from the template, revising the\ncurrent head.\n",
}

local VALUE_OPTS = { ["--dir"] = "dir", ["--url"] = "url", ["--config"] = "config",
  ["--lock-timeout"] = "lock_timeout", ["--ddl-lock-timeout"] = "ddl_lock_timeout",
  ["--statement-timeout"] = "statement_timeout", ["-m"] = "message", ["--message"] = "message" }
local FLAG_OPTS = { ["--sql"] = "sql", ["--yes"] = "yes", ["-y"] = "yes", ["--destructive"] = "destructive",
  ["--json"] = "json", ["-v"] = "verbose", ["--verbose"] = "verbose", ["--help"] = "help", ["-h"] = "help" }

local function usage_error(msg)
  return { usage = msg }
end

-- Split args into options and positional words.
local function parse(args)
  local o, words = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local key, inline = a:match("^(%-%-[%w%-]+)=(.*)$")
    if key and VALUE_OPTS[key] then
      o[VALUE_OPTS[key]] = inline
      i = i + 1
    elseif VALUE_OPTS[a] then
      if args[i + 1] == nil then return nil, usage_error("option " .. a .. " needs a value") end
      o[VALUE_OPTS[a]] = args[i + 1]
      i = i + 2
    elseif FLAG_OPTS[a] then
      o[FLAG_OPTS[a]] = true
      i = i + 1
    elseif a:match("^%-%-?%a") and not a:match("^%-%d+$") then
      return nil, usage_error("unknown option " .. a)
    else
      words[#words + 1] = a
      i = i + 1
    end
  end
  return o, words
end

local function out(fmt, ...) io.stdout:write(string.format(fmt, ...)) end
local function err(fmt, ...) io.stderr:write(string.format(fmt, ...)) end

local function json(v) out("%s\n", core.json_encode(v)) end

local function default_isatty(fd)
  local ok = os.execute("test -t " .. tostring(fd))
  return ok == true
end

-- The context with defaults filled in.
local function context(ctx, o)
  ctx = ctx or {}
  local c = {}
  for k, v in pairs(ctx) do c[k] = v end
  if o.url or o.config then
    -- Given after `db`, they win over the caller's manager; main closes it.
    c.manager = function()
      if not c.own then
        local db = require "caracal.db"
        if o.url then c.own = db.create_connection_manager({ url = o.url })
        else c.own = db.create_connection_manager(nil, { config_file = o.config }) end
      end
      return c.own
    end
  elseif not c.manager then
    c.manager = function()
      return require("caracal.cli").manager({})
    end
  end
  local tty = {}
  local isatty = c.isatty or default_isatty
  c.tty = function(fd)
    if tty[fd] == nil then tty[fd] = isatty(fd) and true or false end
    return tty[fd]
  end
  c.read_line = c.read_line or function() return io.stdin:read("l") end
  return c
end

local function label(rev, seq, message)
  if not rev then return "base (empty)" end
  if seq then return string.format("%s (%04d %s)", rev, seq, message) end
  return rev
end

-- Progress lines: on a terminal, "[2/5] Applying 0002 hardening ... done
-- (123 ms)" as it happens; otherwise one plain line per finished revision.
local function printer(tty)
  return function(ev)
    local s = ev.script
    if ev.event == "lock_wait" then
      out("waiting for the migration lock, held by %s\n", ev.text)
    elseif ev.event == "adopt" then
      out("adopting a database made by the Python tool (alembic %s) as revision %s (%04d %s)\n",
        ev.alembic, s.revision, s.seq, s.message)
    elseif ev.event == "start" and tty then
      out("[%d/%d] %s %04d %s ... ", ev.index, ev.total, ev.direction == "up" and "Applying" or "Reverting",
        s.seq, s.message)
      io.stdout:flush()
    elseif ev.event == "done" then
      if tty then out("done (%d ms)\n", ev.ms)
      else out("%s %04d %s %s (%d ms)\n", ev.direction == "up" and "applied" or "reverted", s.seq, s.revision,
        s.message, ev.ms) end
    elseif ev.event == "failed" and tty then
      out("FAILED\n")
    end
  end
end

local function finite_seconds(v)
  local n = tonumber(v)
  if not n or n ~= n or n < 0 or n == math.huge then return nil end
  return n
end

-- Options for caracal.migrate from the parsed command line.
local function api_opts(o, c, extra)
  local opts = { dir = o.dir or c.dir }
  -- The host's interrupt flag (SIGINT): checked between revisions.
  if c.should_stop and extra and extra.progress then opts.should_stop = c.should_stop end
  if o.lock_timeout then
    opts.lock_timeout = finite_seconds(o.lock_timeout)
    if not opts.lock_timeout then error(usage_error("--lock-timeout needs a number of seconds >= 0"), 0) end
  end
  if o.ddl_lock_timeout then opts.ddl_lock_timeout = math.tointeger(tonumber(o.ddl_lock_timeout)) or o.ddl_lock_timeout end
  if o.statement_timeout then opts.statement_timeout = math.tointeger(tonumber(o.statement_timeout)) or o.statement_timeout end
  for k, v in pairs(extra or {}) do opts[k] = v end
  return opts
end

local commands = {}

function commands.current(o, words, c)
  local info = migrate.current(c.manager(), api_opts(o, c))
  if o.json then json(info) return info.problem and 1 or 0 end
  if info.problem then
    err("caracal db: %s\n", info.problem)
    return 1
  end
  local line = label(info.revision, info.seq, info.message)
  if info.revision and info.revision == info.head then line = line .. " (head)" end
  if info.dirty then line = line .. " DIRTY: run `caracal db check` for details" end
  if info.adoptable then
    line = line .. string.format(" (made by the Python tool, alembic %s; recorded at the next upgrade)", info.adoptable)
  end
  out("%s\n", line)
  if info.pending and info.pending > 0 then
    out("%d pending: head is %s; run 'caracal db upgrade head'\n", info.pending, info.head)
  end
  return 0
end

function commands.history(o, words, c)
  local list = migrate.history(c.manager(), api_opts(o, c))
  if o.json then json(core.json_array(list)) return 0 end
  if #list == 0 then out("no migrations in %s\n", require("caracal.migrate.scripts").dir(api_opts(o, c))) return 0 end
  for _, e in ipairs(list) do
    local state
    if e.missing_script then state = "applied, NO SCRIPT"
    elseif e.dirty then state = "DIRTY"
    elseif e.drift then state = "applied, EDITED SINCE"
    elseif e.applied then state = "applied"
    else state = "pending" end
    local marks = (e.current and " (current)" or "") .. (e.head and " (head)" or "")
    out("%s %s %s%s  [%s]\n", e.seq and string.format("%04d", e.seq) or "????", e.revision, e.message or "", marks, state)
    if e.applied_at then
      out("     applied %s by %s in %s ms\n", e.applied_at, tostring(e.applied_by), tostring(e.duration_ms))
    end
    if o.verbose then
      out("     file %s, revises %s%s\n", tostring(e.file), e.down_revision or "base",
        e.transactional == false and ", runs outside a transaction" or "")
      if e.checksum then out("     checksum %s\n", e.checksum) end
      if e.stored_checksum and e.stored_checksum ~= e.checksum then
        out("     applied checksum %s\n", e.stored_checksum)
      end
    end
  end
  return 0
end

function commands.heads(o, words, c)
  local heads, problems = migrate.heads(api_opts(o, c))
  if o.json then
    json({ heads = core.json_array(heads), problems = core.json_array(problems) })
  else
    for _, h in ipairs(heads) do out("%s (%04d %s) %s\n", h.revision, h.seq, h.message, h.file) end
    for _, p in ipairs(problems) do err("caracal db: %s\n", p) end
  end
  return (#heads <= 1 and #problems == 0) and 0 or 1
end

function commands.check(o, words, c)
  local ok, report = migrate.check(c.manager(), api_opts(o, c))
  if o.json then
    report.pending = core.json_array(report.pending)
    report.drift = core.json_array(report.drift)
    report.messages = core.json_array(report.messages)
    json(report)
    return ok and 0 or 1
  end
  if ok then
    out("up to date at %s\n", report.current or "base (no migrations)")
  else
    for _, m in ipairs(report.messages) do out("%s\n", m) end
  end
  for _, n in ipairs(report.notes or {}) do out("%s\n", n) end
  return ok and 0 or 1
end

local function need_target(words, cmd)
  if not words[1] then error(usage_error(cmd .. " needs a TARGET (head, base, a revision, +N, -N)"), 0) end
  if words[2] then error(usage_error(cmd .. " takes one TARGET, got also '" .. words[2] .. "'"), 0) end
  return words[1]
end

function commands.upgrade(o, words, c)
  local target = need_target(words, "upgrade")
  if o.sql then
    out("%s", migrate.upgrade(nil, target, api_opts(o, c, { sql = true })))
    return 0
  end
  local res = migrate.upgrade(c.manager(), target, api_opts(o, c, { progress = printer(c.tty(1)) }))
  if res.nothing_to_do then
    out("nothing to do: the database is at %s\n", res.to or "base")
  else
    local total = 0
    for _, a in ipairs(res.applied) do total = total + a.ms end
    out("upgraded from %s to %s: %d revision%s in %d ms\n", res.from or "base", res.to, #res.applied,
      #res.applied == 1 and "" or "s", total)
  end
  return 0
end

function commands.downgrade(o, words, c)
  local target = need_target(words, "downgrade")
  if o.sql then
    out("%s", migrate.downgrade(nil, target, api_opts(o, c, { sql = true, destructive = o.destructive })))
    return 0
  end
  local function confirm(from, to)
    if o.yes then return true end
    if not c.tty(0) then
      error(usage_error(string.format("refusing to downgrade from %s to %s without confirmation: stdin is " ..
        "not a terminal; pass --yes", from, to)), 0)
    end
    err("Downgrade from %s to %s? [y/N] ", from, to)
    local answer = c.read_line() or ""
    return answer:match("^%s*[yY]") ~= nil
  end
  local res = migrate.downgrade(c.manager(), target, api_opts(o, c, {
    progress = printer(c.tty(1)), destructive = o.destructive, confirm = confirm }))
  if res.cancelled then
    out("cancelled: nothing was changed\n")
    return 1
  end
  if res.nothing_to_do then
    out("nothing to do: the database is at %s\n", res.to or "base")
  else
    out("downgraded from %s to %s: %d revision%s\n", res.from or "base", res.to or "base", #res.reverted,
      #res.reverted == 1 and "" or "s")
  end
  return 0
end

local function stamp_like(name)
  return function(o, words, c)
    local rev = need_target(words, name)
    local res = migrate.stamp(c.manager(), rev, api_opts(o, c))
    out("%s: the database is now recorded at %s\n", name == "force" and "forced" or "stamped", res.to or "base")
    return 0
  end
end
commands.stamp = stamp_like("stamp")
commands.force = stamp_like("force")

function commands.accept(o, words, c)
  local rev = need_target(words, "accept")
  if not o.message then error(usage_error("accept needs a reason: -m REASON"), 0) end
  local res = migrate.accept(c.manager(), rev, o.message, api_opts(o, c))
  if res.unchanged then out("%s: the script matches what was applied; nothing to accept\n", res.revision)
  else out("accepted the edit of %s: checksum %s -> %s\n", res.revision, res.previous, res.checksum) end
  return 0
end

function commands.revision(o, words, c)
  if not o.message then error(usage_error("revision needs a message: -m MESSAGE"), 0) end
  if words[1] then error(usage_error("revision takes no arguments besides -m MESSAGE"), 0) end
  local path, rev = migrate.revision(o.message, api_opts(o, c))
  out("created %s (revision %s)\n", path, rev)
  return 0
end

--- Run `caracal db ARGS`.
-- @tparam table args the words after `db`
-- @tparam[opt] table ctx see the module's description
-- @treturn integer exit code
function M.main(args, ctx)
  local o, words = parse(args or {})
  if not o then
    err("caracal db: %s\nTry 'caracal db --help'.\n", words.usage)
    return 2
  end
  local cmd = table.remove(words, 1)
  if not cmd or cmd == "help" then
    if cmd == "help" and words[1] and M.command_usage[words[1]] then out("%s", M.command_usage[words[1]]) return 0 end
    if o.help or cmd == "help" then out("%s", M.usage) return 0 end
    err("caracal db: a command is needed\nTry 'caracal db --help'.\n")
    return 2
  end
  if not commands[cmd] then
    err("caracal db: unknown command '%s'\nTry 'caracal db --help'.\n", cmd)
    return 2
  end
  if o.help then out("%s", M.command_usage[cmd]) return 0 end
  local c = context(ctx, o)
  local ok, res = pcall(commands[cmd], o, words, c)
  if c.own then c.own:close() end
  if ok then return res end
  if type(res) == "table" and res.usage then
    err("caracal db %s: %s\nTry 'caracal db %s --help'.\n", cmd, res.usage, cmd)
    return 2
  end
  if core.is_error(res) and res.kind == "usage" then
    err("caracal db %s: %s\nTry 'caracal db %s --help'.\n", cmd, res.message, cmd)
    return 2
  end
  err("caracal db %s: %s\n", cmd, migrate.format_error(res))
  return 1
end

return M
