--- Test setup for the authority, Merkle and snapshot database specs.
--
-- Each spec file gets a fresh database of its own on the throwaway cluster
-- (testdb.fresh_database), migrated by the real migrations to "head" or
-- to a given revision, so it cannot collide with other specs sharing the
-- cluster; plus helpers to tamper with history and to run Python.
local testdb = require "testdb"

local M = {}

local root = os.getenv("CARACAL_ROOT") or "."

--- A fresh database with the schema at `target` ("head" by default, or
-- a revision id such as the baseline's).
-- @treturn table `{name, url, manager, close = fn}`
function M.create(prefix, target)
  local d = testdb.fresh_database(prefix, { migrate = target or "head", pool_size = 4, max_overflow = 4 })
  d.close = d.drop
  return d
end

--- The revision id of the v0.5 baseline (revision 1), or nil.
function M.baseline_revision()
  local ok, migrate = pcall(require, "caracal.migrate")
  if not ok then return nil end
  local scripts = migrate.load({ dir = root .. "/migrations" })
  local first = scripts.at and scripts:at(1)
  return first and first.revision or nil
end

--- Run fn(session) in a transaction as the table owner with the
-- append-only triggers of ledger tables disabled (simulating a superuser
-- who tampers with history), then re-enable them.
function M.tamper(h, fn)
  h.manager:session_scope(function(s)
    for _, t in ipairs({ "ledger_events", "authority_ledger_events" }) do
      s:execute('ALTER TABLE "' .. t .. '" DISABLE TRIGGER USER')
    end
    fn(s)
    for _, t in ipairs({ "ledger_events", "authority_ledger_events" }) do
      s:execute('ALTER TABLE "' .. t .. '" ENABLE TRIGGER USER')
    end
  end)
end

local function tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

--- Is python3 with the `cryptography` package available?
function M.has_python()
  local _, rc = testdb.sh("python3 -c 'import cryptography'")
  return rc == 0
end

--- Run a Python script (text) with one argument: a file holding input.
-- Returns its standard output; raises with the output on failure.
function M.python(script, input)
  local sp, ip = tmpfile(script), tmpfile(input or "")
  local out, rc = testdb.sh("python3 " .. sp .. " " .. ip)
  os.remove(sp)
  os.remove(ip)
  if rc ~= 0 then error("python3 failed: " .. out, 2) end
  return out
end

return M
