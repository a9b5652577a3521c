--- Schema migrations: Lua scripts in `migrations/`, applied in order, each
-- in its own transaction, under an advisory lock, with checksums.
--
--    local migrate = require "caracal.migrate"
--    migrate.upgrade(manager, "head")                 -- apply what is pending
--    migrate.downgrade(manager, "-1")                 -- undo the last revision
--    print(migrate.upgrade(nil, "head", {sql = true})) -- the SQL, no database touched
--    migrate.check_schema_version_on_startup(manager) -- raise unless at head
--
-- Targets: `head`, `base`, a revision id or unique prefix, `+N`, `-N`; in
-- `--sql` mode also a range `FROM:TO`. Options (`opts`, every function):
-- `dir` (the migrations folder; default `$CARACAL_MIGRATIONS_DIR`, else
-- the host's), `lock_timeout` (seconds to wait for the migration lock,
-- default 60), `ddl_lock_timeout` (each revision's `SET LOCAL
-- lock_timeout`, default '10s'), `statement_timeout` (each revision's,
-- default: the server's), `destructive` (allow a downgrade that drops
-- rows), `progress(event)` (called as revisions start and finish),
-- `confirm(from, to)` (downgrade asks; false cancels), `should_stop()`
-- (checked between revisions: true stops at that safe point, e.g. after
-- SIGINT, raising kind "interrupted" once the lock is released).
--
-- The history table is `caracal_migrations` (see caracal.migrate.history).
-- Failures raise caracal.Error objects with `kind` set ("migration_failed",
-- "locked", "drift", "schema_dirty", "schema_outdated", "schema_ahead",
-- "schema_unknown", "destructive", "usage", ...), and for a failed
-- revision `file`, `line`, `revision`, `sql` and the server's fields.
-- @module caracal.migrate
local core = require "caracal.core"
local scripts_mod = require "caracal.migrate.scripts"
local history = require "caracal.migrate.history"
local ops = require "caracal.migrate.ops"
local sqltext = require "caracal.migrate.sqltext"
local lockmod = require "caracal.migrate.lock"

local M = {}

M.HISTORY_TABLE = history.TABLE
M.LOCK_KEY = lockmod.KEY

--- Defaults of the options.
M.defaults = { lock_timeout = 60, ddl_lock_timeout = "10s" }

local function raise(fields)
  error(core.Error(fields), 0)
end

local function now_ms()
  return core.utcnow():micros() / 1000
end

local function label(s) return scripts_mod.label(s) end

local OPTION_KEYS = { dir = true, lock_timeout = true, ddl_lock_timeout = true, statement_timeout = true,
  destructive = true, progress = true, confirm = true, sql = true, should_stop = true }

-- Validate options and fill defaults.
local function options(opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do
    if not OPTION_KEYS[k] then raise { kind = "usage", message = "caracal.migrate: unknown option '" .. tostring(k) .. "'" } end
    o[k] = v
  end
  if o.lock_timeout == nil then o.lock_timeout = M.defaults.lock_timeout end
  if type(o.lock_timeout) ~= "number" or o.lock_timeout ~= o.lock_timeout or o.lock_timeout < 0 then
    raise { kind = "usage", message = "lock_timeout must be a number of seconds >= 0" }
  end
  if o.ddl_lock_timeout == nil then o.ddl_lock_timeout = M.defaults.ddl_lock_timeout end
  o.ddl_lock_timeout = scripts_mod.check_timeout("ddl_lock_timeout", o.ddl_lock_timeout)
  o.statement_timeout = scripts_mod.check_timeout("statement_timeout", o.statement_timeout)
  return o
end

local function progress(opts, ev)
  if opts.progress then opts.progress(ev) end
end

local function need_manager(manager)
  manager = manager or require("caracal.db").get_connection_manager()
  if not manager then
    raise { kind = "usage", message = "caracal.migrate: no connection manager (pass one, or call " ..
      "caracal.initialize_connection_manager first)" }
  end
  return manager
end

--- Load and validate the migration scripts (no database is touched).
-- @tparam[opt] table opts `dir`
-- @treturn caracal.migrate.scripts.Scripts
M.load = function(opts) return scripts_mod.load({ dir = opts and opts.dir }) end

---------------------------------------------------------------------------
-- Running a script's up or down, online or recorded
---------------------------------------------------------------------------

-- The fields of a failed revision's error: the server's fields when the
-- cause is a caracal.Error, else its text.
local function failure_fields(script, fn, err)
  local fields = { kind = "migration_failed", revision = script.revision, file = script.display,
                   where = script.display, direction = fn, cause = err }
  if core.is_error(err) then
    for _, k in ipairs({ "sqlstate", "message", "detail", "hint", "position", "context", "schema", "table",
                         "column", "datatype", "constraint", "severity", "sql", "connection_lost" }) do
      fields[k] = err[k]
    end
  else
    fields.message = tostring(err)
  end
  return fields
end

-- Run script[fn](op) and turn any failure into a located error: the file
-- and line of the script frame that was running, the SQL and the server's
-- fields. The message handler runs before the stack unwinds, so it can
-- find the script's own frame under the op call.
local function run_script(script, fn, op)
  local where_line
  local ok, err = xpcall(script[fn], function(e)
    for level = 2, 60 do
      local info = debug.getinfo(level, "Sl")
      if not info then break end
      if info.source == script.chunkname then
        where_line = info.currentline
        break
      end
    end
    return e
  end, op)
  if ok then return true end
  local fields = failure_fields(script, fn, err)
  if not core.is_error(err) then
    local msg = tostring(err)
    -- A Lua error raised in the script already names chunk:line; keep the
    -- line and strip the prefix (it goes into `where`).
    local prefix_line, rest = msg:match("^" .. script.display:gsub("%p", "%%%0") .. ":(%d+): (.*)$")
    if prefix_line then
      where_line = where_line or tonumber(prefix_line)
      msg = rest
    end
    fields.message = msg
  end
  fields.line = where_line
  fields.where = script.display .. (where_line and (":" .. where_line) or "")
  return false, fields
end

local function timeouts_sql(script, opts, localy)
  local out = {}
  local set = localy and "SET LOCAL " or "SET "
  local lt = script.lock_timeout or opts.ddl_lock_timeout
  if lt then out[#out + 1] = set .. "lock_timeout = " .. sqltext.literal(lt) end
  local st = script.statement_timeout or opts.statement_timeout
  if st then out[#out + 1] = set .. "statement_timeout = " .. sqltext.literal(st) end
  return out
end

---------------------------------------------------------------------------
-- Reading the database's state
---------------------------------------------------------------------------

-- First differing line of two texts (normalised), for drift reports.
local function first_difference(stored, loc)
  local a, b = {}, {}
  for l in (scripts_mod.normalise(stored or "") .. "\n"):gmatch("([^\n]*)\n") do a[#a + 1] = l end
  for l in (scripts_mod.normalise(loc) .. "\n"):gmatch("([^\n]*)\n") do b[#b + 1] = l end
  for i = 1, math.max(#a, #b) do
    if a[i] ~= b[i] then return i, a[i], b[i] end
  end
  return nil
end

-- The migration status of a database against the scripts. Read-only.
local function read_status(session, scripts, opts)
  local state = history.read(session, { scripts = opts and opts.with_text })
  local st = { state = state, scripts = scripts, head = scripts.head, count = scripts:count(), drift = {} }
  if state.forked then
    st.kind = "unknown"
    st.problem = "the history table has several tips (" .. table.concat(state.forked, ", ") ..
      "): it was edited by hand; fix it with `caracal db stamp <revision>`"
  elseif state.current then
    st.current = state.current
    st.index = scripts:index(state.current)
    if not st.index then
      local head = scripts.head and scripts.head.revision
      for _, rev in ipairs(history.ancestry(state, state.current)) do
        if rev == head then st.kind = "ahead" break end
      end
      st.kind = st.kind or "unknown"
      if st.kind == "ahead" then
        st.problem = string.format("the database is at revision %s, newer than the newest script here " ..
          "(%s, in %s): it was upgraded by a newer Caracal", state.current, head, scripts.dir)
      else
        st.problem = string.format("the database is at revision %s, which is not among the scripts in %s " ..
          "(was a script deleted, or are these the wrong migrations?)", state.current, scripts.dir)
      end
    end
  elseif state.alembic and not next(state.rows) then
    local adopt
    for _, s in ipairs(scripts.list) do
      if s.adopt and s.adopt.alembic == state.alembic then adopt = s end
    end
    if not adopt then
      st.kind = "unknown"
      st.problem = string.format("the database was made by the Python tool at alembic revision %s; " ..
        "only a database at %s can be adopted", state.alembic,
        (function()
          local v = {}
          for _, s in ipairs(scripts.list) do if s.adopt then v[#v + 1] = s.adopt.alembic end end
          return #v > 0 and table.concat(v, ", ") or "(none: no script declares adopt)"
        end)())
    else
      local missing = {}
      local present = history.existing_tables(session, adopt.adopt.tables or {})
      local have = {}
      for _, t in ipairs(present) do have[t] = true end
      for _, t in ipairs(adopt.adopt.tables or {}) do if not have[t] then missing[#missing + 1] = t end end
      if #missing > 0 then
        st.kind = "unknown"
        st.problem = string.format("alembic_version says %s but tables %s are missing", state.alembic,
          table.concat(missing, ", "))
      else
        st.adopt = adopt
        st.current = adopt.revision
        st.index = adopt.index
      end
    end
  else
    st.index = 0
    local known = {}
    for _, s in ipairs(scripts.list) do
      for _, t in ipairs(s.adopt and s.adopt.tables or {}) do known[#known + 1] = t end
    end
    local found = #known > 0 and history.existing_tables(session, known) or {}
    if #found > 0 then
      st.kind = "unversioned"
      st.problem = string.format("the database has Caracal tables (%s) but no recorded revision: if its " ..
        "schema is that of a revision, record it with `caracal db stamp <revision>`", table.concat(found, ", "))
    end
  end
  if state.dirty then
    st.dirty = state.dirty
  end
  if st.index then st.pending = st.count - st.index end
  for _, row in ipairs(state.list) do
    local s = scripts.by_rev[row.revision]
    if s and s.checksum ~= row.checksum then
      local d = { revision = row.revision, file = s.display, stored = row.checksum, ["local"] = s.checksum }
      if row.script then d.line, d.stored_line, d.local_line = first_difference(row.script, s.source) end
      st.drift[#st.drift + 1] = d
    end
  end
  return st
end

local function drift_message(st)
  local lines = { "migration scripts were edited after they were applied:" }
  for _, d in ipairs(st.drift) do
    lines[#lines + 1] = string.format("  %s (%s): stored checksum %s, local %s", d.revision, d.file,
      d.stored, d["local"])
    if d.line then
      lines[#lines + 1] = string.format("    first difference at line %d: applied %q, now %q", d.line,
        d.stored_line or "", d.local_line or "")
    end
  end
  return table.concat(lines, "\n")
end

local function dirty_message(row)
  return string.format("the database is dirty: revision %s (%s) runs outside a transaction and did not " ..
    "complete, so its changes may be half applied. Fix the schema by hand, then run " ..
    "`caracal db force %s` if the revision's changes are all in place, or `caracal db force %s` if none are",
    row.revision, row.file, row.revision, row.down_revision or "base")
end

-- Refuse to change anything when the state is not one a runner can
-- reason about. `what` names the command for messages.
local function guard(st, what)
  if st.dirty then raise { kind = "schema_dirty", revision = st.dirty.revision, message = dirty_message(st.dirty) } end
  if st.kind then
    raise { kind = st.kind == "ahead" and "schema_ahead" or "schema_unknown", message = st.problem }
  end
  if #st.drift > 0 then
    raise { kind = "drift", drift = st.drift, message = drift_message(st),
            hint = "restore the applied text (the history table keeps it), or accept the change with " ..
                   "`caracal db accept <revision> -m REASON`; nothing was " .. what .. "d" }
  end
end

---------------------------------------------------------------------------
-- The runner (online)
---------------------------------------------------------------------------

local Runner = {}
Runner.__index = Runner

-- Take the lock, open the work session, run fn(runner), and release both
-- whatever happens.
local function with_lock(manager, opts, command, fn)
  local lock = lockmod.acquire(manager, {
    timeout = opts.lock_timeout, label = "caracal db " .. command .. " (" .. history.client() .. ")",
    on_wait = function(h) progress(opts, { event = "lock_wait", holder = h, text = lockmod.describe(h) }) end,
  })
  local self = setmetatable({ manager = manager, opts = opts, lock = lock,
    session = manager:session({ holder = "caracal.migrate" }) }, Runner)
  local res = table.pack(pcall(fn, self))
  pcall(self.session.close, self.session)
  lock.release()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

function Runner:status(scripts, with_text)
  local ok, st = pcall(read_status, self.session, scripts, { with_text = with_text })
  pcall(self.session.rollback, self.session) -- read only: end the transaction
  if not ok then error(st, 0) end
  return st
end

function Runner:ensure_history()
  self.session:execute_script(history.DDL)
  self.session:commit()
end

function Runner:adopt(st)
  local s = st.adopt
  progress(self.opts, { event = "adopt", script = s, alembic = st.state.alembic })
  local session = self.session
  session:execute_script(history.DDL)
  for i = 1, s.index do
    history.insert(session, st.scripts:at(i), "adopted from alembic " .. st.state.alembic .. " by " ..
      history.client(), { duration_ms = 0 })
  end
  session:commit()
end

-- Apply one revision up or down. Transactional: BEGIN, timeouts, the
-- script, the history row, COMMIT; any failure rolls all of it back.
-- Non-transactional: mark dirty, run in autocommit, clear the mark.
function Runner:apply(script, direction, index, total)
  local opts, session = self.opts, self.session
  if opts.should_stop and opts.should_stop() then
    raise { kind = "interrupted", revision = script.revision, message = string.format("stopped before %s " ..
      "%s as asked; every revision before it is complete", direction == "up" and "applying" or "reverting",
      label(script)) }
  end
  local fn = direction == "up" and "up" or "down"
  self.lock.note((direction == "up" and "applying " or "reverting ") .. string.format("%04d %s", script.seq, script.revision))
  progress(opts, { event = "start", script = script, direction = direction, index = index, total = total })
  local started = now_ms()
  local ok, failure
  if script.transaction then
    local conn = session:connection()
    local op = ops.new {
      run = function(sql) return (session:execute_script(sql)) end,
      quote = function(name) return conn:quote_ident(name) end,
      transactional = true,
    }
    ok, failure = pcall(function()
      for _, s in ipairs(timeouts_sql(script, opts, true)) do session:execute_script(s) end
    end)
    if ok then ok, failure = run_script(script, fn, op) end
    if ok then
      ok, failure = pcall(function()
        if direction == "up" then history.insert(session, script, history.client())
        else history.delete(session, script.revision) end
        session:commit()
      end)
      if not ok then failure = failure_fields(script, fn, failure) end
    end
    if not ok then
      pcall(session.rollback, session)
      -- Where the database stays: below this revision going up, at it going down.
      local below = script.revision
      if direction == "up" then below = script.down_revision end
      failure.outcome = "rolled_back"
      failure.outcome_message = string.format("revision %s was rolled back completely; the database " ..
        "stays at %s", label(script), below or "base (empty)")
      progress(opts, { event = "failed", script = script, direction = direction })
      raise(failure)
    end
  else
    local conn = session:connection()
    -- Dirty first, committed on its own: if what follows fails halfway
    -- (or the runner dies), the next run knows the state is uncertain.
    if direction == "up" then
      history.insert(conn, script, history.client(), { dirty = true })
    else
      conn:execute("UPDATE caracal_migrations SET dirty = true WHERE revision = $1::text", script.revision)
    end
    local op = ops.new {
      run = function(sql) return (conn:exec_script(sql)) end,
      quote = function(name) return conn:quote_ident(name) end,
      transactional = false,
    }
    ok, failure = pcall(function()
      for _, s in ipairs(timeouts_sql(script, opts, false)) do conn:exec_script(s) end
    end)
    if ok then ok, failure = run_script(script, fn, op) end
    pcall(conn.exec_script, conn, "RESET lock_timeout; RESET statement_timeout")
    if not ok then
      -- Which revision each outcome of a manual fix corresponds to.
      local done = direction == "up" and script.revision or (script.down_revision or "base")
      local undone = direction == "up" and (script.down_revision or "base") or script.revision
      failure.outcome = "dirty"
      failure.outcome_message = string.format("revision %s runs outside a transaction: statements " ..
        "before the failing one stay applied, and the database is marked dirty. Fix it by hand, then " ..
        "run `caracal db force %s` (change complete) or `caracal db force %s` (change undone)",
        label(script), done, undone)
      progress(opts, { event = "failed", script = script, direction = direction })
      raise(failure)
    end
    local ms = math.floor(now_ms() - started)
    if direction == "up" then
      conn:execute("UPDATE caracal_migrations SET dirty = false, duration_ms = $2::int, applied_at = now() " ..
        "WHERE revision = $1::text", script.revision, ms)
    else
      history.delete(conn, script.revision)
    end
  end
  local ms = math.floor(now_ms() - started)
  progress(opts, { event = "done", script = script, direction = direction, ms = ms, index = index, total = total })
  return { revision = script.revision, file = script.file, message = script.message, ms = ms }
end

-- Count the rows a downgrade through these scripts would drop.
function Runner:destructive_rows(list)
  local lost = {}
  for _, s in ipairs(list) do
    for _, t in ipairs(history.existing_tables(self.session, s.destructive_down)) do
      local n = self.session:scalar("select count(*) from " .. sqltext.quote_ident(t))
      if n and n > 0 then lost[#lost + 1] = { table = t, rows = n, revision = s.revision } end
    end
  end
  pcall(self.session.rollback, self.session)
  return lost
end

---------------------------------------------------------------------------
-- Offline (--sql)
---------------------------------------------------------------------------

local function terminate(sql)
  sql = sql:gsub("%s+$", "")
  if sql:sub(-1) ~= ";" then sql = sql .. ";" end
  return sql
end

-- Parse FROM:TO or TO into positions for offline runs.
local function offline_range(scripts, direction, target)
  if type(target) ~= "string" or target == "" then
    raise { kind = "usage", message = "a target is needed: head, base, a revision id or prefix, or FROM:TO" }
  end
  local a, b = target:match("^([^:]*):([^:]*)$")
  local function pos(t)
    if t:match("^[+-]%d+$") then
      raise { kind = "usage", message = "relative targets (" .. t .. ") need a database; with --sql give FROM:TO" }
    end
    return scripts:resolve(t)
  end
  if direction == "upgrade" then
    local from = (a and a ~= "") and pos(a) or 0
    local to = pos(b or target)
    if to < from then
      raise { kind = "usage", message = "upgrade range " .. target .. " goes down; use downgrade" }
    end
    return from, to
  end
  if not a or a == "" or b == "" then
    raise { kind = "usage", message = "downgrade with --sql needs a range FROM:TO, such as head:base " ..
      "(there is no database to read the current revision from)" }
  end
  local from, to = pos(a), pos(b)
  if to > from then raise { kind = "usage", message = "downgrade range " .. target .. " goes up; use upgrade" } end
  return from, to
end

--- The SQL an upgrade or downgrade would run, without touching any
-- database (Alembic's `--sql`): BEGIN ... COMMIT per revision, with the
-- history table's DDL and rows, ready for `psql -v ON_ERROR_STOP=1 -f`.
-- @tparam string direction "upgrade" or "downgrade"
-- @tparam string target a target, or FROM:TO (required for downgrade)
-- @tparam[opt] table opts options; `destructive` is needed to emit a
-- downgrade through a revision that drops tables
-- @treturn string
function M.sql(direction, target, opts)
  opts = options(opts)
  if direction ~= "upgrade" and direction ~= "downgrade" then
    raise { kind = "usage", message = "direction must be upgrade or downgrade" }
  end
  local scripts = M.load(opts)
  local from, to = offline_range(scripts, direction, target)
  local out = { string.format("-- caracal db %s %s --sql (migrations: %s)", direction, target, scripts.label_dir),
                "-- Apply with: psql -v ON_ERROR_STOP=1 -f FILE", "" }
  local function add(s) out[#out + 1] = s end
  if direction == "downgrade" and not opts.destructive then
    for i = from, to + 1, -1 do
      local s = scripts:at(i)
      if #s.destructive_down > 0 then
        raise { kind = "destructive", message = string.format("downgrading through %s drops tables %s " ..
          "with whatever rows they hold; pass --destructive to emit it", label(s),
          table.concat(s.destructive_down, ", ")) }
      end
    end
  end
  if direction == "upgrade" then
    add("BEGIN;")
    add(terminate(history.DDL))
    add("COMMIT;")
    add("")
  end
  local by = "caracal db --sql by " .. history.client()
  local first, last, step = from + 1, to, 1
  if direction == "downgrade" then first, last, step = from, to + 1, -1 end
  for i = first, last, step do
    local s = scripts:at(i)
    local up = direction == "upgrade"
    local stmts = {}
    local op = ops.new {
      run = function(sql)
        stmts[#stmts + 1] = terminate(sql)
        return setmetatable({}, { __index = { columns = {} } })
      end,
      quote = sqltext.quote_ident, transactional = s.transaction, offline = true,
    }
    local ok, failure = run_script(s, up and "up" or "down", op)
    if not ok then raise(failure) end
    if up then
      add(string.format("-- Running upgrade %s -> %s: %s (%s)", s.down_revision or "base", s.revision, s.message, s.file))
    else
      add(string.format("-- Running downgrade %s -> %s: %s (%s)", s.revision, s.down_revision or "base", s.message, s.file))
    end
    if s.transaction then
      add("BEGIN;")
      for _, t in ipairs(timeouts_sql(s, opts, true)) do add(t .. ";") end
      for _, t in ipairs(stmts) do add(t) end
      add(terminate(up and history.insert_sql(s, by) or history.delete_sql(s.revision)))
      add("COMMIT;")
    else
      add("-- This revision runs outside a transaction; it is marked dirty until it completes.")
      add(up and terminate(history.insert_sql(s, by, true))
             or ("UPDATE caracal_migrations SET dirty = true WHERE revision = " .. sqltext.literal(s.revision) .. ";"))
      for _, t in ipairs(timeouts_sql(s, opts, false)) do add(t .. ";") end
      for _, t in ipairs(stmts) do add(t) end
      add("RESET lock_timeout;")
      add("RESET statement_timeout;")
      add(up and ("UPDATE caracal_migrations SET dirty = false WHERE revision = " .. sqltext.literal(s.revision) .. ";")
             or terminate(history.delete_sql(s.revision)))
    end
    add("")
  end
  return table.concat(out, "\n")
end

---------------------------------------------------------------------------
-- Commands
---------------------------------------------------------------------------

--- Upgrade to a target (default "head"). Each revision runs in its own
-- transaction; a failure rolls that revision back and raises, leaving the
-- revisions before it applied. With `opts.sql`, returns the SQL instead
-- and touches no database.
-- @tparam ConnectionManager|nil manager
-- @tparam[opt="head"] string target
-- @tparam[opt] table opts
-- @treturn table `{from=, to=, applied={{revision, file, message, ms}}, adopted=}` (or the SQL text)
function M.upgrade(manager, target, opts)
  target = target or "head"
  opts = options(opts)
  if opts.sql then return M.sql("upgrade", target, opts) end
  local scripts = M.load(opts)
  manager = need_manager(manager)
  return with_lock(manager, opts, "upgrade", function(r)
    local st = r:status(scripts, true)
    guard(st, "upgrade")
    local to = scripts:resolve(target, st.index)
    if to < st.index then
      raise { kind = "usage", message = string.format("target %s (%s) is below the current revision %s: " ..
        "use downgrade", target, label(scripts:at(to)), label(scripts:at(st.index))) }
    end
    local result = { from = st.current, to = st.current, applied = {} }
    if st.adopt then
      r:adopt(st)
      result.adopted = st.adopt.revision
    end
    if to == st.index then
      progress(opts, { event = "nothing", current = scripts:at(st.index) })
      result.nothing_to_do = true
      return result
    end
    if not st.state.exists and not st.adopt then r:ensure_history() end
    for i = st.index + 1, to do
      result.applied[#result.applied + 1] = r:apply(scripts:at(i), "up", i - st.index, to - st.index)
      result.to = scripts:at(i).revision
    end
    return result
  end)
end

--- Downgrade to a target (`base`, an id or prefix, `-N`). Refused when a
-- revision on the way declares `destructive_down` tables that hold rows,
-- unless `opts.destructive`. With `opts.sql`, the target must be FROM:TO.
-- @tparam ConnectionManager|nil manager
-- @tparam string target
-- @tparam[opt] table opts
-- @treturn table `{from=, to=, reverted={...}}` (or the SQL text)
function M.downgrade(manager, target, opts)
  opts = options(opts)
  if opts.sql then return M.sql("downgrade", target, opts) end
  local scripts = M.load(opts)
  manager = need_manager(manager)
  return with_lock(manager, opts, "downgrade", function(r)
    local st = r:status(scripts, true)
    guard(st, "downgrade")
    local to = scripts:resolve(target, st.index)
    if to > st.index then
      raise { kind = "usage", message = string.format("target %s (%s) is above the current revision %s: " ..
        "use upgrade", target, label(scripts:at(to)), label(scripts:at(st.index))) }
    end
    local result = { from = st.current, to = st.current, reverted = {} }
    if to == st.index then
      progress(opts, { event = "nothing", current = scripts:at(st.index) })
      result.nothing_to_do = true
      return result
    end
    local path = {}
    for i = st.index, to + 1, -1 do path[#path + 1] = scripts:at(i) end
    if not opts.destructive then
      local lost = r:destructive_rows(path)
      if #lost > 0 then
        local parts = {}
        for _, l in ipairs(lost) do
          parts[#parts + 1] = string.format("%s (%d row%s)", l.table, l.rows, l.rows == 1 and "" or "s")
        end
        raise { kind = "destructive", lost = lost, message = string.format("downgrade to %s would drop " ..
          "data: %s; pass --destructive (destructive = true) to do it anyway", label(scripts:at(to)),
          table.concat(parts, ", ")) }
      end
    end
    if opts.confirm and not opts.confirm(label(scripts:at(st.index)), label(scripts:at(to))) then
      result.cancelled = true
      return result
    end
    if st.adopt then r:adopt(st) end
    for n, s in ipairs(path) do
      result.reverted[#result.reverted + 1] = r:apply(s, "down", n, #path)
      result.to = s.down_revision
    end
    return result
  end)
end

--- Record a revision as the current one without running any script
-- (for a database whose schema is known to be at that revision). Also
-- clears a dirty mark (`force` is the same command).
-- @tparam ConnectionManager|nil manager
-- @tparam string rev a target (`base`, `head`, an id or prefix)
-- @tparam[opt] table opts
-- @treturn table `{from=, to=}`
function M.stamp(manager, rev, opts)
  opts = options(opts)
  local scripts = M.load(opts)
  manager = need_manager(manager)
  return with_lock(manager, opts, "stamp", function(r)
    local st = r:status(scripts, false)
    local to = scripts:resolve(rev, st.index)
    local session = r.session
    session:execute_script(history.DDL)
    local keep = {}
    for i = 1, to do keep[scripts:at(i).revision] = true end
    for _, row in ipairs(st.state.list) do
      if not keep[row.revision] then history.delete(session, row.revision) end
    end
    for i = 1, to do
      local s = scripts:at(i)
      if not st.state.rows[s.revision] then
        history.insert(session, s, "stamped by " .. history.client(), { duration_ms = 0 })
      end
    end
    session:execute("UPDATE caracal_migrations SET dirty = false WHERE dirty")
    session:commit()
    return { from = st.state.current, to = scripts:at(to) and scripts:at(to).revision or nil }
  end)
end

--- Same as `stamp`: named for clearing a dirty mark after a failed
-- non-transactional revision was finished (or undone) by hand.
M.force = M.stamp

--- Accept an applied script's edit: store its new checksum and text, and
-- record who accepted it, when and why (the old checksum is kept).
-- @tparam ConnectionManager|nil manager
-- @tparam string rev an id or prefix
-- @tparam string reason
-- @tparam[opt] table opts
function M.accept(manager, rev, reason, opts)
  opts = options(opts)
  if type(reason) ~= "string" or not reason:find("%S") then
    raise { kind = "usage", message = "accepting drift needs a reason (-m REASON)" }
  end
  local scripts = M.load(opts)
  manager = need_manager(manager)
  return with_lock(manager, opts, "accept", function(r)
    local s = scripts:find(rev)
    local st = r:status(scripts, false)
    local row = st.state.rows[s.revision]
    if not row then raise { kind = "usage", message = "revision " .. s.revision .. " is not applied" } end
    if row.checksum == s.checksum then return { revision = s.revision, unchanged = true } end
    r.session:execute("UPDATE caracal_migrations SET previous_checksum = checksum, checksum = $2::text, " ..
      "script = $3::text, drift_accepted_at = now(), drift_accepted_by = current_user || ' (' || $4::text || ')', " ..
      "drift_reason = $5::text WHERE revision = $1::text", s.revision, s.checksum, s.source, history.client(), reason)
    r.session:commit()
    return { revision = s.revision, previous = row.checksum, checksum = s.checksum }
  end)
end

-- Read-only status through a short session.
local function snapshot(manager, scripts, with_text)
  local session = manager:session({ readonly = true, holder = "caracal.migrate status" })
  local ok, st = pcall(read_status, session, scripts, { with_text = with_text })
  session:close()
  if not ok then error(st, 0) end
  return st
end

local function script_info(s)
  if not s then return nil end
  return { revision = s.revision, seq = s.seq, message = s.message, file = s.file }
end

--- Where the database is: `{revision, seq, message, head, pending, dirty,
-- adoptable (alembic version), problem, kind}`. Read-only: an adoptable
-- database is reported at the adopted revision but recorded only by the
-- next upgrade, downgrade or stamp.
-- @tparam ConnectionManager|nil manager
-- @tparam[opt] table opts
-- @treturn table
function M.current(manager, opts)
  opts = options(opts)
  local scripts = M.load(opts)
  local st = snapshot(need_manager(manager), scripts, false)
  local cur = st.index and scripts:at(st.index)
  return {
    revision = st.current, seq = cur and cur.seq, message = cur and cur.message,
    head = scripts.head and scripts.head.revision, pending = st.pending,
    dirty = st.dirty and st.dirty.revision or nil, adoptable = st.adopt and st.state.alembic or nil,
    kind = st.kind, problem = st.problem,
  }
end

--- Every revision, base first: the scripts with their applied state, then
-- applied revisions that have no script. Each entry: `revision, seq,
-- message, file, down_revision, applied (bool), applied_at, applied_by,
-- duration_ms, dirty, checksum, stored_checksum, drift, current, head,
-- transactional, missing_script`.
-- @tparam ConnectionManager|nil manager nil: the scripts alone
-- @tparam[opt] table opts
-- @treturn table list
function M.history(manager, opts)
  opts = options(opts)
  local scripts = M.load(opts)
  local st = manager and snapshot(manager, scripts, false) or { state = { rows = {}, list = {} }, drift = {} }
  local out = {}
  for _, s in ipairs(scripts.list) do
    local row = st.state.rows[s.revision]
    out[#out + 1] = {
      revision = s.revision, seq = s.seq, message = s.message, file = s.file, down_revision = s.down_revision,
      applied = row ~= nil or (st.index ~= nil and s.index <= st.index and st.adopt ~= nil),
      applied_at = row and tostring(row.applied_at), applied_by = row and row.applied_by,
      duration_ms = row and row.duration_ms, dirty = row and row.dirty or false,
      checksum = s.checksum, stored_checksum = row and row.checksum,
      drift = row ~= nil and row.checksum ~= s.checksum, current = st.current == s.revision,
      head = s == scripts.head, transactional = s.transaction,
    }
  end
  for _, row in ipairs(st.state.list) do
    if not scripts.by_rev[row.revision] then
      out[#out + 1] = { revision = row.revision, message = row.message, file = row.file,
        down_revision = row.down_revision, applied = true, applied_at = tostring(row.applied_at),
        applied_by = row.applied_by, duration_ms = row.duration_ms, dirty = row.dirty,
        stored_checksum = row.checksum, current = st.current == row.revision, missing_script = true }
    end
  end
  return out
end

--- The head revisions of the scripts (more than one is an error for
-- every other command) and the graph's problems. Touches no database.
-- @tparam[opt] table opts
-- @treturn table heads `{revision, seq, message, file}`
-- @treturn table problems (strings)
function M.heads(opts)
  local scripts, problems = scripts_mod.scan({ dir = opts and opts.dir })
  local out = {}
  for _, s in ipairs(scripts.heads) do out[#out + 1] = script_info(s) end
  return out, problems
end

--- Is the database up to date with the scripts? `ok` is false when
-- revisions are pending, a script drifted, the database is dirty, ahead or
-- at an unknown revision.
-- @tparam ConnectionManager|nil manager
-- @tparam[opt] table opts
-- @treturn boolean ok
-- @treturn table report `{current, head, pending = {{revision, seq, message}}, drift = {...},
-- dirty, problem, kind, messages = {strings}}`
function M.check(manager, opts)
  opts = options(opts)
  local scripts = M.load(opts)
  local st = snapshot(need_manager(manager), scripts, true)
  local report = { current = st.current, head = scripts.head and scripts.head.revision, pending = {},
                   drift = st.drift, dirty = st.dirty and st.dirty.revision or nil, kind = st.kind,
                   problem = st.problem, messages = {} }
  if st.index then
    for i = st.index + 1, scripts:count() do report.pending[#report.pending + 1] = script_info(scripts:at(i)) end
  end
  local msgs = report.messages
  if st.dirty then msgs[#msgs + 1] = dirty_message(st.dirty) end
  if st.problem then msgs[#msgs + 1] = st.problem end
  if #st.drift > 0 then msgs[#msgs + 1] = drift_message(st) end
  if #report.pending > 0 then
    local names = {}
    for _, p in ipairs(report.pending) do names[#names + 1] = string.format("%04d %s (%s)", p.seq, p.revision, p.message) end
    msgs[#msgs + 1] = string.format("%d pending migration%s: %s; run 'caracal db upgrade head'", #names,
      #names == 1 and "" or "s", table.concat(names, ", "))
  end
  report.ok = #msgs == 0
  if st.adopt then
    -- Information, not a failure: adoption is recorded by the next write.
    report.adoptable = st.state.alembic
    report.notes = { "the database was made by the Python tool (alembic " .. st.state.alembic ..
      "); the next upgrade records it as revision " .. st.adopt.revision }
  end
  return report.ok, report
end

--- Fail fast when the database schema is not the one these scripts end
-- at (the seed's `check_schema_version_on_startup`). Read-only, no lock.
-- @tparam ConnectionManager|nil manager
-- @tparam[opt] table opts `dir`
-- @treturn true at head
-- @raise caracal.Error with `kind` "schema_outdated" (behind or empty),
-- "schema_ahead" (newer than the scripts), "schema_unknown" (a revision
-- the scripts do not know, or tables with no recorded revision) or
-- "schema_dirty" (a non-transactional revision did not complete)
function M.check_schema_version_on_startup(manager, opts)
  local scripts = M.load(opts)
  local st = snapshot(need_manager(manager), scripts, false)
  local head = scripts.head and scripts.head.revision or "none"
  local current = st.current or "none"
  if st.dirty then
    raise { kind = "schema_dirty", current_revision = st.dirty.revision, head_revision = head,
            message = "Database schema is dirty! " .. dirty_message(st.dirty) }
  end
  if st.kind == "ahead" then
    raise { kind = "schema_ahead", current_revision = current, head_revision = head,
            message = string.format("Database schema is newer than this Caracal! Current revision: %s, " ..
              "Head revision: %s: the database was upgraded by a newer version; run that version, or " ..
              "downgrade the database with it", current, head) }
  end
  if st.kind then
    raise { kind = "schema_unknown", current_revision = current, head_revision = head,
            message = string.format("Database schema is at an unknown revision! Current revision: %s, " ..
              "Head revision: %s: %s", current, head, st.problem) }
  end
  if st.pending and st.pending > 0 then
    raise { kind = "schema_outdated", current_revision = current, head_revision = head, pending = st.pending,
            message = string.format("Database schema is outdated! Current revision: %s, Head revision: %s, " ..
              "Pending migrations: %d, run 'caracal db upgrade head'", current, head, st.pending) }
  end
  return true
end

--- Write a new revision file from the template, revising the current
-- head: `NNNN_<12 hex>_<slug>.lua`, NNNN one more than the highest.
-- @tparam string message one line
-- @tparam[opt] table opts `dir`
-- @treturn string the new file's path
-- @treturn string the new revision id
function M.revision(message, opts)
  if type(message) ~= "string" or not message:find("%S") or message:find("[%c]") then
    raise { kind = "usage", message = "revision needs a one-line message (-m MESSAGE)" }
  end
  local scripts = M.load(opts)
  local rev
  repeat
    rev = core.uuid4():gsub("-", ""):sub(1, 12)
  until not scripts.by_rev[rev]
  local seq = 0
  for _, s in ipairs(scripts.all) do seq = math.max(seq, s.seq) end
  local slug = message:lower():gsub("[^%w]+", "_"):gsub("^_+", ""):gsub("_+$", ""):sub(1, 40):gsub("_+$", "")
  local file = string.format("%04d_%s%s.lua", seq + 1, rev, slug ~= "" and ("_" .. slug) or "")
  local path = scripts.dir .. "/" .. file
  local exists = io.open(path, "r")
  if exists then exists:close() raise { kind = "usage", message = path .. " already exists" } end
  local text = require("caracal.migrate.template").render {
    revision = rev, down_revision = scripts.head and scripts.head.revision or nil, message = message,
    date = os.date("!%Y-%m-%d %H:%M:%S UTC"),
  }
  local f, err = io.open(path, "wb")
  if not f then raise { kind = "io", message = "cannot write " .. path .. ": " .. tostring(err) } end
  f:write(text)
  f:close()
  return path, rev
end

--- A schema snapshot from catalog queries (tables, columns, constraints,
-- indexes, triggers, functions, sequences of the current schema; the
-- history and alembic tables left out), as sorted lines: compare two
-- snapshots to compare schemas.
-- @tparam ConnectionManager manager
-- @treturn table lines
function M.snapshot(manager)
  return require("caracal.migrate.catalog").snapshot(need_manager(manager))
end

--- One readable block for a migration error: `file:line: ERROR sqlstate:
-- message`, the SQL with the failing line marked (psql's `LINE n:`), then
-- detail, hint and what happened to the revision.
-- @param err
-- @treturn string
function M.format_error(err)
  if not core.is_error(err) then return tostring(err) end
  local lines = {}
  local first = tostring(err.message)
  -- Server errors read like psql; the runner's own refusals are plain.
  if err.sqlstate then
    local sev = (err.severity == "FATAL" or err.severity == "PANIC" or not err.severity) and "ERROR" or err.severity
    first = sev .. " " .. err.sqlstate .. ": " .. first
  end
  if err.kind == "migration_failed" and err.where then first = err.where .. ": " .. first end
  lines[1] = first
  if err.detail then lines[#lines + 1] = "DETAIL: " .. err.detail end
  if err.hint then lines[#lines + 1] = "HINT: " .. err.hint end
  if err.sql then
    local pos = tonumber(err.position)
    if pos then
      local ln, col, text = sqltext.locate(err.sql, pos)
      local prefix = "LINE " .. ln .. ": "
      lines[#lines + 1] = prefix .. text
      lines[#lines + 1] = string.rep(" ", #prefix + col - 1) .. "^"
    end
    local sql = err.sql
    if #sql > 2000 then sql = sql:sub(1, 2000) .. "..." end
    lines[#lines + 1] = "SQL: " .. sql
  end
  if err.outcome_message then lines[#lines + 1] = err.outcome_message end
  return table.concat(lines, "\n")
end

--- The `caracal db` command line (see caracal.migrate.cli).
-- @tparam table args the words after `db`
-- @tparam[opt] table ctx `manager()` (made on first call), `dir`, `isatty(fd)`,
-- `read_line()`
-- @treturn integer exit code: 0 success, 1 failure, 2 usage
function M.main(args, ctx)
  return require("caracal.migrate.cli").main(args, ctx)
end

return M
