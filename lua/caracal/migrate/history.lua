--- The history table `caracal_migrations`: one row per applied revision,
-- with the checksum and text of the script as it was applied, who applied
-- it, when, and how long it took. The current revision is derived from the
-- rows: the applied revision that no other applied revision revises.
--
-- Rows are inserted and deleted inside the revision's own transaction, so
-- the recorded version can never disagree with the schema. A
-- non-transactional revision is recorded `dirty` before it starts and
-- cleared when it completes.
-- @module caracal.migrate.history
local sqltext = require "caracal.migrate.sqltext"

local M = {}

M.TABLE = "caracal_migrations"

--- The table's DDL (idempotent).
M.DDL = [[CREATE TABLE IF NOT EXISTS caracal_migrations (
    revision VARCHAR(32) PRIMARY KEY,
    down_revision VARCHAR(32),
    message TEXT NOT NULL,
    file TEXT NOT NULL,
    checksum TEXT NOT NULL,
    script TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT NOT NULL,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    dirty BOOLEAN NOT NULL DEFAULT false,
    previous_checksum TEXT,
    drift_accepted_at TIMESTAMPTZ,
    drift_accepted_by TEXT,
    drift_reason TEXT
)]]

-- How long the current transaction has run, in ms: the revision's
-- duration when its history row is written last, in the same transaction.
M.DURATION_SQL = "(extract(epoch from clock_timestamp() - now()) * 1000)::integer"

local client_label
--- Who runs this process: "user@host" (os user, host name), read once.
function M.client()
  if client_label then return client_label end
  local user = os.getenv("USER") or os.getenv("LOGNAME")
  if not user or user == "" then
    -- Services and containers often run without USER; ask once.
    local p = io.popen("id -un 2>/dev/null")
    user = p and p:read("l") or nil
    if p then p:close() end
  end
  user = (user and user ~= "") and user or "?"
  local host = os.getenv("HOSTNAME")
  if not host or host == "" then
    local f = io.open("/proc/sys/kernel/hostname", "r") or io.open("/etc/hostname", "r")
    if f then
      host = (f:read("l") or ""):match("^%s*(.-)%s*$")
      f:close()
    end
  end
  client_label = user .. "@" .. ((host and host ~= "") and host or "?")
  return client_label
end

--- What `applied_by` records: the database role and the client, as a SQL
-- expression (`current_user` is only known to the server).
-- @tparam string note e.g. "root@build1" or "stamp by root@build1"
-- @treturn string SQL
function M.applied_by_sql(note)
  return "current_user || ' (' || " .. sqltext.literal(note) .. " || ')'"
end

--- Read the database's migration state. Runs in the session's
-- transaction (the caller ends it); never writes.
-- @tparam Session session
-- @tparam[opt] table opts `scripts` (also read the stored script texts)
-- @treturn table `{exists, rows = {rev -> row}, list = {rows}, current =
-- rev|nil, dirty = row|nil, alembic = version_num|nil, forked = {revs}|nil}`
function M.read(session, opts)
  opts = opts or {}
  local probe = session:first([[select to_regclass('caracal_migrations') is not null as history,
    to_regclass('alembic_version') is not null as alembic]])
  local state = { exists = probe.history, rows = {}, list = {} }
  if probe.alembic then
    local row = session:first("select version_num::text as v from alembic_version limit 1")
    state.alembic = row and row.v or nil
    state.alembic_table = true
  end
  if not state.exists then return state end
  local cols = "revision::text as revision, down_revision::text as down_revision, message, file, checksum, " ..
    "applied_at, applied_by, duration_ms, dirty, previous_checksum, drift_accepted_at, drift_accepted_by, drift_reason"
  if opts.scripts then cols = cols .. ", script" end
  local rows = session:execute("select " .. cols .. " from caracal_migrations order by applied_at, revision")
  local referenced = {}
  for _, r in ipairs(rows) do
    state.rows[r.revision] = r
    state.list[#state.list + 1] = r
    if r.down_revision then referenced[r.down_revision] = true end
    if r.dirty then state.dirty = r end
  end
  local tips = {}
  for _, r in ipairs(rows) do
    if not referenced[r.revision] then tips[#tips + 1] = r.revision end
  end
  if #tips == 1 then state.current = tips[1]
  elseif #tips > 1 then state.forked = tips end
  return state
end

--- Which of these tables exist (in the search path)?
-- @tparam Session session
-- @tparam table names
-- @treturn table the names that exist, in the given order
function M.existing_tables(session, names)
  local found = {}
  for _, name in ipairs(names) do
    if session:scalar("select to_regclass($1::text) is not null", sqltext.quote_ident(name)) then
      found[#found + 1] = name
    end
  end
  return found
end

--- Walk the history from a revision down through `down_revision`s and
-- return the revisions passed (the revision itself first).
-- @tparam table state from `read`
-- @tparam string rev
-- @treturn table
function M.ancestry(state, rev)
  local out, seen = {}, {}
  while rev and not seen[rev] do
    seen[rev] = true
    out[#out + 1] = rev
    local row = state.rows[rev]
    rev = row and row.down_revision
  end
  return out
end

--- INSERT of a history row as SQL text with literal values (for `--sql`).
-- @tparam table script
-- @tparam string applied_by a note for `applied_by_sql`
-- @tparam[opt] boolean dirty
-- @treturn string
function M.insert_sql(script, applied_by, dirty)
  local L = sqltext.literal
  return string.format("INSERT INTO caracal_migrations (revision, down_revision, message, file, checksum, " ..
    "script, applied_by, duration_ms, dirty) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
    L(script.revision), L(script.down_revision), L(script.message), L(script.file), L(script.checksum),
    L(script.source), M.applied_by_sql(applied_by), dirty and "0" or M.DURATION_SQL, dirty and "true" or "false")
end

--- Insert a history row (online, parameters sent separately).
-- @param exec a Session or a Connection (anything with `execute`)
-- @tparam table script
-- @tparam string applied_by note
-- @tparam[opt] table opts `dirty`, `duration_ms` (else the transaction's age)
function M.insert(exec, script, applied_by, opts)
  opts = opts or {}
  local duration = opts.duration_ms and tostring(math.floor(opts.duration_ms)) or M.DURATION_SQL
  if opts.dirty then duration = "0" end
  exec:execute("INSERT INTO caracal_migrations (revision, down_revision, message, file, checksum, script, " ..
    "applied_by, duration_ms, dirty) VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, " ..
    "current_user || ' (' || $7::text || ')', " .. duration .. ", $8::boolean)",
    script.revision, script.down_revision, script.message, script.file, script.checksum, script.source,
    applied_by, opts.dirty and true or false)
end

--- DELETE of a history row as SQL text (for `--sql`).
function M.delete_sql(rev)
  return "DELETE FROM caracal_migrations WHERE revision = " .. sqltext.literal(rev)
end

--- Delete a history row (online).
function M.delete(exec, rev)
  exec:execute("DELETE FROM caracal_migrations WHERE revision = $1::text", rev)
end

return M
