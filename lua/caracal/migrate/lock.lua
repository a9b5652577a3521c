--- The migration lock: a session-level advisory lock, so two runners
-- never apply the same revision.
--
-- It lives on a dedicated connection that runs nothing else and holds no
-- transaction, so it survives each revision's COMMIT, does not get in the
-- way of `CREATE INDEX CONCURRENTLY`, and is released by the server if the
-- runner dies. It is taken by polling `pg_try_advisory_lock` (never a
-- blocking `pg_advisory_lock`, which could wait forever), and on timeout
-- the error names the holder from `pg_stat_activity`. The connection is
-- unlocked before it goes back to the pool (and the pool's reset runs
-- `pg_advisory_unlock_all` too); if unlocking fails it is thrown away.
-- @module caracal.migrate.lock
local core = require "caracal.core"

local M = {}

--- The advisory lock key: the bytes "caracalM" as a big-endian int8, the
-- same for every Caracal runner on a database.
M.KEY = string.unpack(">i8", "caracalM")

local POLL_SECONDS = 0.15

local function now_ms()
  return core.utcnow():micros() // 1000
end

-- The application_name the lock connection shows in pg_stat_activity, so
-- whoever waits (or a DBA) sees who holds the lock and what it is doing.
local function set_label(conn, label)
  conn:execute("select set_config('application_name', $1::text, false)", label:sub(1, 63))
end

--- Who holds the lock now, or nil: pid, application_name, client_addr,
-- usename, backend_start, query_start, state.
-- @param conn a Connection on the same database
-- @treturn table|nil
function M.holder(conn)
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
  return string.format("pid %s (application '%s', user %s, client %s, connected since %s, " ..
    "last query at %s, state %s)", tostring(h.pid), h.application_name or "", h.usename or "?",
    h.client_addr or "local socket", tostring(h.backend_start), tostring(h.query_start), h.state or "?")
end

--- Take the lock on a dedicated connection of the manager.
-- @tparam ConnectionManager manager
-- @tparam[opt] table opts `timeout` (seconds, default 60), `label` (what
-- pg_stat_activity shows), `on_wait(holder)` (called once when the lock
-- is busy)
-- @treturn table lock with `note(text)` and `release()`
-- @raise caracal.Error kind "locked" naming the holder on timeout
function M.acquire(manager, opts)
  opts = opts or {}
  local timeout = opts.timeout or 60
  local session = manager:session({ holder = "caracal.migrate lock" })
  local ok, err = pcall(function()
    local conn = session:connection()
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
      if now_ms() - start >= timeout * 1000 then
        local h = M.holder(conn)
        error(core.Error {
          kind = "locked", sqlstate = "55P03", holder = h,
          message = string.format("could not get the migration lock within %s s: it is held by %s",
            tostring(timeout), M.describe(h)),
          hint = "another `caracal db` command is running on this database; wait for it, or raise " ..
                 "--lock-timeout (a runner that died releases the lock with its connection)",
        }, 0)
      end
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
    local ok, err = pcall(set_label, session:connection(), "caracal migrate: " .. text)
    if not ok then
      error(core.Error {
        kind = "lock_lost", sqlstate = core.is_error(err) and err.sqlstate or nil,
        message = "the migration lock's connection failed (" .. (core.is_error(err) and err.message or
          tostring(err)) .. "), so the lock is gone: stopping before " .. text,
      }, 0)
    end
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
