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
