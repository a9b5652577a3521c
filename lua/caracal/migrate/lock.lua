--- The migration lock, so two runners never apply the same revision.
--
-- Connected to the server directly (or through a session pooler), it is a
-- session-level advisory lock on a dedicated connection that runs nothing
-- else and holds no transaction, so it survives each revision's COMMIT,
-- does not get in the way of `CREATE INDEX CONCURRENTLY`, and is released
-- by the server if the runner dies. It is taken by polling
-- `pg_try_advisory_lock` (never a blocking `pg_advisory_lock`, which could
-- wait forever), and on timeout the error names the holder from
-- `pg_stat_activity`. The connection is unlocked before it goes back to
-- the pool (and the pool's reset runs `pg_advisory_unlock_all` too); if
-- unlocking fails it is thrown away.
--
-- Behind a transaction pooler (`pooler = "transaction"`) a session lock
-- would stay on whichever server connection ran the statement, and be
-- unlocked, or not, on another: the Rails/PgBouncer failure. There the
-- lock is a lease: one row of `caracal_migration_lock` (made on first
-- use) holding the runner's token, what it is doing and when the lease
-- expires (`LEASE_SECONDS` after it was last renewed). Each statement on
-- it is a short transaction, so any server connection will do. The lease
-- is renewed before each revision (`note`), and inside each revision's own
-- transaction (`guard`), which also locks the row until that revision
-- commits: a runner whose lease ran out during a long revision cannot be
-- overtaken while it works, and finds out (kind "lock_lost") before the
-- next one. A runner that dies leaves the lease to expire: another runner
-- takes it over LEASE_SECONDS after the last renewal, and the timeout error
-- names the holder and the expiry. Connected through a pooler the
-- configuration does not mention (the server's backend pid is not the one
-- libpq was told), the runner refuses to guess and says to set `pooler`.
-- @module caracal.migrate.lock
local core = require "caracal.core"

local M = {}

--- The advisory lock key: the bytes "caracalM" as a big-endian int8, the
-- same for every Caracal runner on a database.
M.KEY = string.unpack(">i8", "caracalM")

--- The lease table (behind a transaction pooler) and how long a lease
-- lasts without renewal.
M.LEASE_TABLE = "caracal_migration_lock"
M.LEASE_SECONDS = 300

local POLL_SECONDS = 0.15

M.LEASE_DDL = [[
CREATE TABLE IF NOT EXISTS caracal_migration_lock (
  id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  token uuid NOT NULL,
  holder text NOT NULL,
  note text,
  acquired_at timestamptz NOT NULL,
  renewed_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL
)]]

local function now_ms()
  return core.utcnow():micros() // 1000
end

-- The application_name the lock connection shows in pg_stat_activity, so
-- whoever waits (or a DBA) sees who holds the lock and what it is doing.
local function set_label(conn, label)
  conn:execute("select set_config('application_name', $1::text, false)", label:sub(1, 63))
end

--- Who holds the lock now, or nil. Advisory lock: pid,
-- application_name, client_addr, usename, backend_start, query_start,
-- state. Lease: holder, note, acquired_at, renewed_at, expires_at, lease
-- (true).
-- @param conn a Connection (advisory) or a Session (lease) on the database
-- @treturn table|nil
function M.holder(conn)
  if getmetatable(conn) == require("caracal.db").Session then
    local ok, row = pcall(function()
      return conn:session_scope(function(s)
        return s:first("SELECT holder, note, acquired_at, renewed_at, expires_at, true AS lease " ..
                       "FROM caracal_migration_lock WHERE id = 1")
      end)
    end)
    return ok and row or nil
  end
  local hi, lo = (M.KEY >> 32) & 0xffffffff, M.KEY & 0xffffffff
  local rows = conn:execute([[select a.pid, a.application_name::text as application_name,
      a.client_addr::text as client_addr, a.usename::text as usename, a.backend_start, a.query_start,
      a.state::text as state
    from pg_locks l join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted and l.objsubid = 1
      and l.database = (select oid from pg_database where datname = current_database())
      and l.classid::int8 = $1::int8 and l.objid::int8 = $2::int8
      and l.pid <> pg_backend_pid()]], hi, lo)
  return rows[1]
end

--- One line naming a holder.
function M.describe(h)
  if not h then return "another session (it was released while we looked)" end
  if h.lease then
    return string.format("%s (lease taken at %s, renewed at %s, expires at %s; doing: %s)", h.holder or "?",
      tostring(h.acquired_at), tostring(h.renewed_at), tostring(h.expires_at), h.note or "?")
  end
  return string.format("pid %s (application '%s', user %s, client %s, connected since %s, " ..
    "last query at %s, state %s)", tostring(h.pid), h.application_name or "", h.usename or "?",
    h.client_addr or "local socket", tostring(h.backend_start), tostring(h.query_start), h.state or "?")
end

local function timeout_error(timeout, h, lease)
  return core.Error {
    kind = "locked", sqlstate = "55P03", holder = h,
    message = string.format("could not get the migration lock within %s s: it is held by %s",
      tostring(timeout), M.describe(h)),
    hint = lease and ("another `caracal db` command is running on this database; wait for it, or raise " ..
             "--lock-timeout (the lease of a runner that died expires " .. M.LEASE_SECONDS .. " s after its " ..
             "last renewal)")
           or ("another `caracal db` command is running on this database; wait for it, or raise " ..
             "--lock-timeout (a runner that died releases the lock with its connection)"),
  }
end

local function lost(text, err)
  error(core.Error {
    kind = "lock_lost", sqlstate = core.is_error(err) and err.sqlstate or nil,
    message = "the migration lock's connection failed (" .. (core.is_error(err) and err.message or
      tostring(err)) .. "), so the lock is gone: stopping before " .. text,
  }, 0)
end

---------------------------------------------------------------------------
-- The lease (behind a transaction pooler)
---------------------------------------------------------------------------

local function make_lease_table(session)
  local ok, err = pcall(function()
    session:session_scope(function(s) s:execute_script(M.LEASE_DDL) end)
  end)
  -- Two runners making it at once: the loser's CREATE fails on the catalog.
  if not ok and not (core.is_error(err) and (err.sqlstate == "23505" or err.sqlstate == "42P07")) then
    error(err, 0)
  end
end

-- Take the lease when it is free or expired; false when another runner
-- holds it (or is renewing it right now).
local function try_lease(session, token, label, ttl)
  local ok, res = pcall(function()
    return session:session_scope(function(s)
      s:execute_script("SET LOCAL lock_timeout = '250ms'")
      local rows = s:execute([[INSERT INTO caracal_migration_lock AS l
          (id, token, holder, note, acquired_at, renewed_at, expires_at)
        VALUES (1, $1::uuid, $2::text, 'waiting to start', clock_timestamp(), clock_timestamp(),
                clock_timestamp() + make_interval(secs => $3::float8))
        ON CONFLICT (id) DO UPDATE SET token = excluded.token, holder = excluded.holder, note = excluded.note,
          acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, expires_at = excluded.expires_at
        WHERE l.expires_at < clock_timestamp()
        RETURNING token]], token, label, ttl)
      return #rows == 1
    end)
  end)
  if ok then return res end
  if core.is_error(res) and res.sqlstate == "55P03" then return false end -- the row is locked: a revision runs
  error(res, 0)
end

-- Renew the lease (in the given session's transaction); false when it is
-- no longer ours.
local function renew(s, token, ttl, note)
  local _, n = s:execute("UPDATE caracal_migration_lock SET renewed_at = clock_timestamp(), " ..
    "expires_at = clock_timestamp() + make_interval(secs => $2::float8), note = coalesce($3::text, note) " ..
    "WHERE id = 1 AND token = $1::uuid", token, ttl, note)
  return n == 1
end

local function acquire_lease(manager, opts)
  local timeout = opts.timeout or 60
  local ttl = opts.lease_seconds or M.LEASE_SECONDS
  local label = opts.label or "caracal migrate"
  local token = core.uuid4()
  local session = manager:session({ holder = "caracal.migrate lock", replica = false, readonly = false })
  local ok, err = pcall(function()
    make_lease_table(session)
    local start = now_ms()
    local told = false
    while not try_lease(session, token, label, ttl) do
      if not told and opts.on_wait then
        told = true
        opts.on_wait(M.holder(session))
      end
      if now_ms() - start >= timeout * 1000 then error(timeout_error(timeout, M.holder(session), true), 0) end
      core.sleep(POLL_SECONDS)
    end
  end)
  if not ok then
    session:close()
    error(err, 0)
  end
  local lock = { session = session, released = false, lease = true, token = token }

  --- Record what the runner is doing and renew the lease; raise (kind
  -- "lock_lost") when it is no longer ours.
  function lock.note(text)
    if lock.released then return end
    local ok2, mine = pcall(function()
      return session:session_scope(function(s) return renew(s, token, ttl, text) end)
    end)
    if not ok2 then lost(text, mine) end
    if not mine then
      lost(text, "the lease expired and another runner took it over")
    end
  end

  --- Inside a revision's transaction (the runner's session): renew the
  -- lease and lock its row until that transaction ends.
  function lock.guard(s)
    if not renew(s, token, ttl, nil) then
      error(core.Error { kind = "lock_lost", message = "the migration lease expired and another runner took " ..
        "it over: stopping before this revision" }, 0)
    end
  end

  --- Give the lease up. Idempotent; never raises (an unreleased lease expires).
  function lock.release()
    if lock.released then return end
    lock.released = true
    pcall(function()
      session:session_scope(function(s)
        s:execute("DELETE FROM caracal_migration_lock WHERE id = 1 AND token = $1::uuid", token)
      end)
    end)
    session:close()
  end

  return lock
end

---------------------------------------------------------------------------
-- The advisory lock (a direct connection)
---------------------------------------------------------------------------

--- Take the lock on a dedicated connection of the manager (or the lease,
-- behind a transaction pooler).
-- @tparam ConnectionManager manager
-- @tparam[opt] table opts `timeout` (seconds, default 60), `label` (what
-- pg_stat_activity, or the lease row, shows), `on_wait(holder)` (called
-- once when the lock is busy), `lease_seconds` (lease only)
-- @treturn table lock with `note(text)`, `release()`, and for a lease
-- `guard(session)` (the runner calls it in each revision's transaction)
-- @raise caracal.Error kind "locked" naming the holder on timeout, kind
-- "pooler" when connected through a pooler the configuration does not name
function M.acquire(manager, opts)
  opts = opts or {}
  if manager.pooled then return acquire_lease(manager, opts) end
  local timeout = opts.timeout or 60
  local session = manager:session({ holder = "caracal.migrate lock", replica = false, readonly = false })
  local ok, err = pcall(function()
    local conn = session:connection()
    -- A pooler in between hands out its own backend key: a session lock
    -- would then land on a server connection others get (unless it pools
    -- whole sessions, which the configuration says).
    if manager.config.pooler ~= "session" then
      local rows = conn:exec_script("select pg_backend_pid()")
      local pid = rows[1] and rows[1][rows.columns[1]]
      if pid ~= conn:backend_pid() then
        error(core.Error { kind = "pooler", sqlstate = "0A000",
          message = string.format("the migration lock needs to know how Caracal reaches the server: this " ..
            "connection goes through a connection pooler (the server's backend pid %s is not %s, the one " ..
            "libpq was told), and a session advisory lock is not safe behind a transaction pooler",
            tostring(pid), tostring(conn:backend_pid())),
          hint = "set pooler = 'transaction' (or ?pooler=transaction in the URL) for PgBouncer's transaction " ..
                 "mode, where the lock becomes a lease row; pooler = 'session' for session pooling; or give " ..
                 "`caracal db` a direct URL" }, 0)
      end
    end
    set_label(conn, opts.label or "caracal migrate")
    local start = now_ms()
    local told = false
    while true do
      local got = conn:execute("select pg_try_advisory_lock($1::int8) as ok", M.KEY)[1].ok
      if got then return end
      if not told and opts.on_wait then
        told = true
        opts.on_wait(M.holder(conn))
      end
      if now_ms() - start >= timeout * 1000 then error(timeout_error(timeout, M.holder(conn), false), 0) end
      conn:exec_script("select pg_sleep(" .. POLL_SECONDS .. ")")
    end
  end)
  if not ok then
    session:close()
    error(err, 0)
  end
  local lock = { session = session, released = false }

  --- Show what the runner is doing (e.g. "applying 0002 d1e2f3a4b5c6"),
  -- and check the lock is still held: if its connection failed, the
  -- server released the lock and another runner may start, so raise
  -- (kind "lock_lost") rather than go on unprotected.
  function lock.note(text)
    if lock.released then return end
    local ok2, err2 = pcall(set_label, session:connection(), "caracal migrate: " .. text)
    if not ok2 then lost(text, err2) end
  end

  --- Unlock and return the connection. Idempotent; never raises.
  function lock.release()
    if lock.released then return end
    lock.released = true
    local ok2 = pcall(function()
      local conn = session:connection()
      conn:execute("select pg_advisory_unlock($1::int8)", M.KEY)
    end)
    if not ok2 and session.conn and not session.conn:released() then
      -- Never hand a connection that may still hold the lock to the pool.
      pcall(session.conn.invalidate, session.conn)
    end
    session:close()
  end

  return lock
end

return M
