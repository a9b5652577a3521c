--- Working behind a transaction pooler (PgBouncer with `pool_mode =
-- transaction`, configured with `pooler = "transaction"` or the URL
-- parameter `?pooler=transaction`).
--
-- Such a pooler gives each transaction whichever server connection is
-- free, so nothing that outlives a transaction may be relied on. Caracal
-- itself then prepares statements unnamed (lconn.c), sends its server
-- settings with SET LOCAL in each transaction instead of connection
-- options (config.lua), does not reset sessions on check-in, and takes
-- the migration lock as a lease row (migrate/lock.lua). What a script
-- asks for that would outlive its transaction is refused before it is
-- sent, with SQLSTATE 0A000 and kind "pooler" (what pgbouncer#976 asks
-- for): it would otherwise stay on a server connection that another
-- client gets next, or be lost when this client gets another one.
-- @module caracal.pooler
local core = require "caracal.core"
local sqltext = require "caracal.migrate.sqltext"

local M = {}

-- Session-level advisory lock functions (the _xact_ ones are fine).
local SESSION_LOCKS = {
  pg_advisory_lock = true, pg_advisory_lock_shared = true, pg_try_advisory_lock = true,
  pg_try_advisory_lock_shared = true, pg_advisory_unlock = true, pg_advisory_unlock_shared = true,
  pg_advisory_unlock_all = true,
}

local HINT_SET = "use SET LOCAL (or set_config(name, value, true)) inside a transaction, or connect to the " ..
                 "server directly (pooler = 'none')"

-- Why one statement (its lowercase words) needs a session, or nil.
local function session_need(w)
  local w1, w2, w3 = w[1], w[2], w[3]
  if w1 == "set" and w2 ~= "local" and w2 ~= "transaction" and w2 ~= "constraints" then
    return "SET without LOCAL changes the session", HINT_SET
  elseif w1 == "reset" then
    return "RESET changes the session", HINT_SET
  elseif w1 == "listen" then
    return "LISTEN needs a session that stays", "listen on a direct connection (pooler = 'none')"
  elseif (w1 == "prepare" and w2 ~= "transaction") or w1 == "deallocate" then
    return "a named prepared statement lives in the session", "run the statement itself (Caracal prepares it unnamed)"
  elseif w1 == "load" or w1 == "discard" then
    return string.upper(w1) .. " acts on the session", nil
  end
  local words = table.concat(w, " ")
  if w1 == "declare" and words:find("%f[%a]with hold%f[%A]") then
    return "a WITH HOLD cursor outlives its transaction", "use a cursor without HOLD inside a transaction"
  end
  if w1 == "create" and (w2 == "temp" or w2 == "temporary" or
      ((w2 == "global" or w2 == "local") and (w3 == "temp" or w3 == "temporary"))) and
      not words:find("%f[%a]on commit drop%f[%A]") then
    return "a temporary table outlives its transaction", "add ON COMMIT DROP"
  end
  for _, x in ipairs(w) do
    if SESSION_LOCKS[x] then
      return x .. " takes or releases a session-level advisory lock",
             "use pg_advisory_xact_lock or pg_try_advisory_xact_lock (released at the end of the transaction)"
    end
    if x == "set_config" and not words:find("%f[%a]true%f[%A]") then
      return "set_config(..., false) changes the session", HINT_SET
    end
  end
  return nil
end

-- Verdicts per SQL text, so a statement run often is scanned once.
local cache, cached = {}, 0

--- Why SQL text needs session state a transaction pooler does not keep,
-- or nil when it does not.
-- @tparam string sql
-- @treturn string|nil the reason
-- @treturn string|nil a hint
function M.session_need(sql)
  local hit = cache[sql]
  if hit ~= nil then
    if hit == false then return nil end
    return hit[1], hit[2]
  end
  local why, hint
  for _, st in ipairs(sqltext.statements(sql, 1000)) do
    why, hint = session_need(st.words)
    if why then break end
  end
  if cached >= 512 then cache, cached = {}, 0 end
  cache[sql] = why and { why, hint } or false
  cached = cached + 1
  return why, hint
end

--- Raise (kind "pooler", SQLSTATE 0A000) when SQL text needs a session.
-- @tparam string sql
function M.check(sql)
  local why, hint = M.session_need(sql)
  if not why then return end
  error(core.Error {
    kind = "pooler", sqlstate = "0A000", sql = sql,
    message = why .. ", which a transaction pooler (pooler = 'transaction') does not keep: it would stay on a " ..
              "server connection that another client gets next",
    hint = hint,
  }, 0)
end

return M
