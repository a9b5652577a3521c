--- Helpers shared by the database specs: the throwaway cluster that
-- spec/run.sh started, and fresh managers pointed at it.
local db = require "caracal.db"

local M = {}

M.url = os.getenv("CARACAL_TEST_URL")
M.home = os.getenv("CARACAL_TEST_HOME")
M.port = tonumber(os.getenv("CARACAL_TEST_PORT"))
M.bin = os.getenv("CARACAL_BIN") or "build/caracal"

--- A manager on the test cluster; extra settings override.
function M.manager(extra)
  assert(M.url, "CARACAL_TEST_URL is not set: run the specs through spec/run.sh")
  local cfg = { url = M.url }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return db.create_connection_manager(cfg)
end

--- Run SQL on a short-lived manager (setup and inspection).
function M.sql(sql, ...)
  local m = M.manager({ pool_size = 1, max_overflow = 0 })
  local rows = m:execute(sql, ...)
  m:close()
  return rows
end

--- Run one statement outside any transaction (CREATE/DROP DATABASE).
function M.admin(sql)
  local m = M.manager({ pool_size = 1, max_overflow = 0 })
  local conn = m.pool:checkout("testdb.admin")
  local ok, err = pcall(conn.exec_script, conn, sql)
  conn:release()
  m:close()
  if not ok then error(err, 0) end
end

--- A new empty database on the test cluster: `{name, url, manager, drop}`.
-- With `opts.migrate`, it is upgraded to `opts.migrate` ("head", or a
-- revision) by the project's migrations. `drop()` closes and drops it.
function M.fresh_database(prefix, opts)
  opts = opts or {}
  local name = string.format("%s_%s", prefix or "t", require("caracal.core").uuid4():gsub("-", ""):sub(1, 12))
  M.admin('CREATE DATABASE "' .. name .. '"')
  local url = M.url:gsub("/[^/?]*$", "/" .. name, 1)
  local d = { name = name, url = url }
  d.manager = db.create_connection_manager({ url = url, pool_size = opts.pool_size or 4,
                                             max_overflow = opts.max_overflow or 4,
                                             pool_timeout = opts.pool_timeout or 10 })
  if opts.migrate then
    local root = os.getenv("CARACAL_ROOT") or "."
    require("caracal.migrate").upgrade(d.manager, opts.migrate, { dir = root .. "/migrations" })
  end
  function d.sql(sql, ...) return d.manager:execute(sql, ...) end
  function d.scalar(sql, ...)
    local rows = d.manager:execute(sql, ...)
    return rows[1] and rows[1][rows.columns[1]]
  end
  function d.drop()
    if d.dropped then return end
    d.dropped = true
    d.manager:close()
    M.admin('DROP DATABASE IF EXISTS "' .. name .. '" WITH (FORCE)')
  end
  return d
end

--- Run a shell command; returns its output and exit code.
function M.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return out:gsub("__rc=%d+%s*$", ""), rc
end

function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Restart the test cluster (fast shutdown), keeping its address.
function M.restart(mode)
  local localdb = require "caracal.localdb"
  localdb.stop({ home = M.home, mode = mode })
  localdb.start({ home = M.home, listen = "127.0.0.1", port = M.port, fast = true, quiet = true })
end

return M
