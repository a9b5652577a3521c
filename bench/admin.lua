-- Database chores of bench/run.sh, run by the host:
--
--    caracal bench/admin.lua template URL NAME     create NAME, migrate it to head, add the principals
--    caracal bench/admin.lua clone URL FROM NAME   create NAME as a copy of FROM (CREATE DATABASE ... TEMPLATE)
--    caracal bench/admin.lua digest URL            {"rows":N,"digest":"md5"} of ledger_events
--    caracal bench/admin.lua drop URL NAME         drop NAME
--
-- URL points at the cluster's maintenance database; NAME is created next
-- to it. Each variant writes into its own copy of the template, so every
-- one starts from the same 16 principals and an empty ledger (the ledger
-- is append-only: TRUNCATE is refused by revision 2's trigger).
local script_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = script_dir .. "/?.lua;" .. package.path

local db = require "caracal.db"
local models = require "caracal.models"
local data = require "data"

local cmd, url = arg[1], arg[2]

local function with_url(name) return (url:gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1", 1)) end

-- One statement outside a transaction (CREATE/DROP DATABASE).
local function admin(sql)
  local m = db.create_connection_manager({ url = url, pool_size = 1, max_overflow = 0 })
  local conn = m.pool:checkout("bench.admin")
  local ok, err = pcall(conn.exec_script, conn, sql)
  conn:release()
  m:close()
  if not ok then error(err, 0) end
end

local function ident(name)
  assert(name:match("^[%w_]+$"), "bad database name " .. name)
  return '"' .. name .. '"'
end

-- The digest every variant's rows must match: all columns but the key,
-- in quantity order (quantities are unique).
local DIGEST_SQL = [[
SELECT count(*) AS rows, md5(string_agg(
  agent_id::text || '|' || (extract(epoch FROM "timestamp") * 1000000)::bigint::text || '|' ||
  resource_type || '|' || quantity::text || '|' || cost::text || '|' || currency || '|' ||
  coalesce(metadata::text, '-') || '|' || coalesce(merkle_root_id::text, '-'),
  ',' ORDER BY quantity)) AS digest
FROM ledger_events]]

if cmd == "template" then
  local name = arg[3]
  admin("DROP DATABASE IF EXISTS " .. ident(name))
  admin("CREATE DATABASE " .. ident(name))
  local m = db.create_connection_manager({ url = with_url(name), pool_size = 2, max_overflow = 0 })
  local root = os.getenv("CARACAL_ROOT") or "."
  require("caracal.migrate").upgrade(m, "head", { dir = root .. "/migrations" })
  m:session_scope(function(s)
    for k = 1, data.NAGENTS do
      s:add(models.Principal { principal_id = data.agent(k), name = "bench-agent-" .. k,
                               principal_type = "agent", owner = "bench@example.com" })
    end
  end)
  m:close()
elseif cmd == "clone" then
  admin(string.format("CREATE DATABASE %s TEMPLATE %s", ident(arg[4]), ident(arg[3])))
elseif cmd == "digest" then
  local m = db.create_connection_manager({ url = url, pool_size = 1, max_overflow = 0 })
  local row = m:execute(DIGEST_SQL)[1]
  m:close()
  data.emit({ rows = row.rows, digest = row.digest or "" })
elseif cmd == "drop" then
  admin("DROP DATABASE IF EXISTS " .. ident(arg[3]) .. " WITH (FORCE)")
else
  io.stderr:write("usage: caracal bench/admin.lua template|clone|digest|drop URL ...\n")
  os.exit(2)
end
