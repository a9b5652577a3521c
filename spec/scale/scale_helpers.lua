--- What the scale specs share: loopback ports, temporary folders, shell
-- commands as the server's user, waiting with a bound, and one-statement
-- admin connections to any cluster.
local core = require "caracal.core"
local db = require "caracal.db"
local testdb = require "testdb"

local M = {}

M.q = testdb.shell_quote
M.sh = testdb.sh
M.bin = testdb.bin

--- Run a shell command that must succeed; its output.
function M.must(cmd)
  local out, rc = testdb.sh(cmd)
  if rc ~= 0 then error(string.format("command failed (exit %s): %s\n%s", tostring(rc), cmd, out), 2) end
  return out
end

function M.is_root()
  return M.must("id -u"):match("^0%s*$") ~= nil
end

--- cmd as the given user (through runuser when we are root), never with
-- the client's LD_PRELOAD (a sanitizer runtime breaks server programs).
function M.as(user, cmd)
  if M.is_root() and user and user ~= "root" then
    return "cd / && env -u LD_PRELOAD runuser -u " .. M.q(user) .. " -- " .. cmd
  end
  return "cd / && env -u LD_PRELOAD " .. cmd
end

--- The first loopback TCP port from `from` that nothing listens on.
function M.free_port(from)
  for p = from, from + 199 do
    local out = testdb.sh("ss -ltnH 'sport = :" .. p .. "' 2>/dev/null")
    if not out:find("%S") then return p end
  end
  error("no free port from " .. from)
end

function M.tmpdir(prefix)
  return (M.must("mktemp -d /tmp/" .. prefix .. ".XXXXXX"):gsub("%s+$", ""))
end

--- Call fn every `step` seconds until it returns a true value (returned),
-- or fail naming `what` after `seconds`.
function M.wait(what, seconds, fn, step)
  local deadline = core.utcnow() + seconds
  while true do
    local v = fn()
    if v then return v end
    if core.utcnow() > deadline then error("timed out after " .. seconds .. " s waiting for " .. what, 2) end
    core.sleep(step or 0.1)
  end
end

--- The folder holding the server programs of a cluster's data folder.
function M.bindir(data)
  local f = io.open(data .. "/PG_VERSION")
  local v = f and f:read("l")
  if f then f:close() end
  if v then
    local dir = "/usr/lib/postgresql/" .. v .. "/bin"
    local _, rc = testdb.sh("test -x " .. M.q(dir .. "/pg_ctl"))
    if rc == 0 then return dir end
  end
  return (M.must("pg_config --bindir"):gsub("%s+$", ""))
end

--- One statement outside any transaction (ALTER SYSTEM, CREATE DATABASE)
-- on the cluster at url; returns the rows.
function M.admin(url, sql)
  local m = db.create_connection_manager({ url = url, pool_size = 1, max_overflow = 0 })
  local conn = m.pool:checkout("scale admin")
  local ok, rows = pcall(conn.exec_script, conn, sql)
  conn:release()
  m:close()
  if not ok then error(rows, 2) end
  return rows
end

--- Lines of a file (empty when it does not exist yet).
function M.lines(path)
  local out = {}
  local f = io.open(path)
  if not f then return out end
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

return M
