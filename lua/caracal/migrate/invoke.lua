--- Running a migration's `up` or `down` (online, or recorded for `--sql`)
-- and turning any failure, SQL or Lua, into one located error: the
-- script's file and line, the SQL, the server's fields.
-- @module caracal.migrate.invoke
local core = require "caracal.core"
local sqltext = require "caracal.migrate.sqltext"

local M = {}

--- The fields of a failed revision's error: the server's fields when the
-- cause is a caracal.Error, else its text.
-- @tparam table script
-- @tparam string fn "up" or "down"
-- @param err the error value
-- @treturn table fields for `caracal.core.Error`
function M.failure_fields(script, fn, err)
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

--- Run script[fn](op) and turn any failure into a located error: the file
-- and line of the script frame that was running, the SQL and the server's
-- fields. The message handler runs before the stack unwinds, so it can
-- find the script's own frame under the op call.
-- @tparam table script
-- @tparam string fn "up" or "down"
-- @tparam table op
-- @treturn[1] true
-- @treturn[2] false
-- @treturn[2] table the error's fields (`where`, `line`, `sql`, `sqlstate`, ...)
function M.run(script, fn, op)
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
  local fields = M.failure_fields(script, fn, err)
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

--- The SET statements of a revision's timeouts (`SET LOCAL` inside its
-- transaction, session-level `SET` for a non-transactional one): the
-- script's own values, else the run's options.
-- @tparam table script
-- @tparam table opts `ddl_lock_timeout`, `statement_timeout`
-- @tparam boolean localy
-- @treturn table statements
function M.timeouts_sql(script, opts, localy)
  local out = {}
  local set = localy and "SET LOCAL " or "SET "
  local lt = script.lock_timeout or opts.ddl_lock_timeout
  if lt then out[#out + 1] = set .. "lock_timeout = " .. sqltext.literal(lt) end
  local st = script.statement_timeout or opts.statement_timeout
  if st then out[#out + 1] = set .. "statement_timeout = " .. sqltext.literal(st) end
  return out
end

return M
