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
-- The pieces: `scripts` (loading, checksums, the chain, targets), `ops`
-- (the `op` object), `sqltext` (quoting, the statement scanner),
-- `history` (the `caracal_migrations` table), `lock` (the advisory lock),
-- `status` (where a database stands), `invoke` (running a script and
-- locating its failure), `offline` (`--sql`), `catalog` (schema
-- snapshots), `template`, `cli` (`caracal db`).
-- Failures raise caracal.Error objects with `kind` set ("migration_failed",
-- "locked", "drift", "schema_dirty", "schema_outdated", "schema_ahead",
-- "schema_unknown", "destructive", "interrupted", "lock_lost", "usage", ...),
-- and for a failed revision `file`, `line`, `revision`, `sql` and the
-- server's fields.
-- @module caracal.migrate
local core = require "caracal.core"
local scripts_mod = require "caracal.migrate.scripts"
local history = require "caracal.migrate.history"
local ops = require "caracal.migrate.ops"
local sqltext = require "caracal.migrate.sqltext"
local lockmod = require "caracal.migrate.lock"
local invoke = require "caracal.migrate.invoke"
local status = require "caracal.migrate.status"
local offline = require "caracal.migrate.offline"

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

--- The SQL an upgrade or downgrade would run, without touching any
-- database (Alembic's `--sql`), ready for `psql -v ON_ERROR_STOP=1 -f`.
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
  return offline.sql(M.load(opts), direction, target, opts)
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
  local ok, st = pcall(status.read, self.session, scripts, { with_text = with_text })
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
      for _, s in ipairs(invoke.timeouts_sql(script, opts, true)) do session:execute_script(s) end
      -- A lease (behind a transaction pooler) is renewed and held in the revision's own transaction.
      if self.lock.guard then self.lock.guard(session) end
    end)
    if not ok then failure = invoke.failure_fields(script, fn, failure) end
    if ok then ok, failure = invoke.run(script, fn, op) end
    if ok then
      ok, failure = pcall(function()
        if direction == "up" then history.insert(session, script, history.client())
        else history.delete(session, script.revision) end
        session:commit()
      end)
      if not ok then failure = invoke.failure_fields(script, fn, failure) end
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
      for _, s in ipairs(invoke.timeouts_sql(script, opts, false)) do conn:exec_script(s) end
    end)
    if not ok then failure = invoke.failure_fields(script, fn, failure) end
    if ok then ok, failure = invoke.run(script, fn, op) end
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
    if direction == "up" then
      conn:execute("UPDATE caracal_migrations SET dirty = false, duration_ms = $2::int, applied_at = now() " ..
        "WHERE revision = $1::text", script.revision, math.floor(now_ms() - started))
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
    status.guard(st, "upgrade")
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
    status.guard(st, "downgrade")
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
  -- On the primary even with replicas: a standby may not have the last revision yet.
  local session = manager:session({ readonly = true, replica = false, holder = "caracal.migrate status" })
  local ok, st = pcall(status.read, session, scripts, { with_text = with_text })
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
  if st.dirty then msgs[#msgs + 1] = status.dirty_message(st.dirty) end
  if st.problem then msgs[#msgs + 1] = st.problem end
  if #st.drift > 0 then msgs[#msgs + 1] = status.drift_message(st) end
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
            message = "Database schema is dirty! " .. status.dirty_message(st.dirty) }
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
