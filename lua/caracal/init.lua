--- Caracal: the Lua API in one table (the global `caracal` in the host).
--
-- Values: `Decimal`, `Instant`, `utcnow`, `uuid4`, `uuid`, `null`,
-- `json_encode`, `json_decode`, `json_array`. Database: `DatabaseConfig`,
-- `initialize_connection_manager`, `get_connection_manager`,
-- `close_connection_manager`. Models: `Principal`, `ExecutionMandate`,
-- `LedgerEvent`, `AuthorityLedgerEvent`, `AuthorityPolicy`, `MerkleRoot`,
-- `LedgerSnapshot`, `AuditLog`. Each submodule can also be required alone
-- (`caracal.db`, `caracal.config`, `caracal.localdb`).
-- @module caracal
local core = require "caracal.core"
local db = require "caracal.db"

local M = { core = core, version = core.version }

for _, name in ipairs({ "Decimal", "is_decimal", "Instant", "is_instant", "utcnow",
                        "instant_from_micros", "uuid4", "uuid", "is_uuid", "null",
                        "json_encode", "json_decode", "json_array", "is_json_array",
                        "Error", "is_error" }) do
  M[name] = core[name]
end
for _, name in ipairs({ "DatabaseConfig", "initialize_connection_manager",
                        "get_connection_manager", "close_connection_manager" }) do
  M[name] = db[name]
end

--- Raise unless the database is at the head revision (the seed's
-- startup check); see caracal.migrate.
function M.check_schema_version_on_startup(manager, opts)
  return require("caracal.migrate").check_schema_version_on_startup(manager, opts)
end

-- The models, by name (caracal.Principal{...}) and as a module.
M.models = require "caracal.models"
for _, name in ipairs(M.models.names()) do M[name] = M.models[name] end

return M
