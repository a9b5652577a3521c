--- TEST SETUP for the authority, Merkle and snapshot database specs.
--
-- Each spec file gets a fresh database of its own on the throwaway cluster
-- (CREATE DATABASE at setup, DROP at teardown), so it cannot collide with
-- other specs sharing the cluster. The eight tables come from the real
-- migrations (`caracal.migrate`, migrations/), to "head" or to a given
-- revision. Only when the migration runner cannot be loaded does it fall
-- back to FALLBACK_DDL below: a copy of shared/spec/schema.md revision 1,
-- for test setup only.
local testdb = require "testdb"
local db = require "caracal.db"
local core = require "caracal.core"

local M = {}

local root = os.getenv("CARACAL_ROOT") or "."

-- Test setup only: schema.md revision 1 (the v0.5 baseline).
M.FALLBACK_DDL = [[
CREATE TABLE principals (
  principal_id UUID PRIMARY KEY, name VARCHAR(255) NOT NULL, principal_type VARCHAR(50) NOT NULL,
  owner VARCHAR(255) NOT NULL, parent_principal_id UUID REFERENCES principals(principal_id),
  public_key_pem VARCHAR(2000), private_key_pem VARCHAR(4000),
  created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, metadata JSONB);
CREATE UNIQUE INDEX ix_principals_name ON principals (name);
CREATE TABLE execution_mandates (
  mandate_id UUID PRIMARY KEY, issuer_id UUID NOT NULL REFERENCES principals(principal_id),
  subject_id UUID NOT NULL REFERENCES principals(principal_id),
  valid_from TIMESTAMP WITHOUT TIME ZONE NOT NULL, valid_until TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  resource_scope JSONB NOT NULL, action_scope JSONB NOT NULL, signature VARCHAR(512) NOT NULL,
  created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, metadata JSONB, revoked BOOLEAN NOT NULL,
  revoked_at TIMESTAMP WITHOUT TIME ZONE, revocation_reason VARCHAR(1000),
  parent_mandate_id UUID REFERENCES execution_mandates(mandate_id), delegation_depth INTEGER NOT NULL,
  intent_hash VARCHAR(64));
CREATE TABLE merkle_roots (
  root_id UUID PRIMARY KEY, batch_id UUID NOT NULL, merkle_root VARCHAR(64) NOT NULL,
  signature VARCHAR(512) NOT NULL, event_count BIGINT NOT NULL, first_event_id BIGINT NOT NULL,
  last_event_id BIGINT NOT NULL, source VARCHAR(50) NOT NULL DEFAULT 'live',
  created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL);
CREATE UNIQUE INDEX ix_merkle_roots_batch_id ON merkle_roots (batch_id);
CREATE TABLE ledger_events (
  event_id BIGSERIAL PRIMARY KEY, agent_id UUID NOT NULL REFERENCES principals(principal_id),
  "timestamp" TIMESTAMP WITHOUT TIME ZONE NOT NULL, resource_type VARCHAR(255) NOT NULL,
  quantity NUMERIC(20,6) NOT NULL, cost NUMERIC(20,6) NOT NULL, currency VARCHAR(3) NOT NULL,
  metadata JSONB, merkle_root_id UUID REFERENCES merkle_roots(root_id) ON DELETE SET NULL);
CREATE TABLE authority_ledger_events (
  event_id BIGSERIAL PRIMARY KEY, event_type VARCHAR(50) NOT NULL,
  "timestamp" TIMESTAMP WITHOUT TIME ZONE NOT NULL, principal_id UUID NOT NULL REFERENCES principals(principal_id),
  mandate_id UUID REFERENCES execution_mandates(mandate_id), decision VARCHAR(20), denial_reason VARCHAR(1000),
  requested_action VARCHAR(255), requested_resource VARCHAR(1000), event_metadata JSONB,
  correlation_id VARCHAR(255), merkle_root_id UUID REFERENCES merkle_roots(root_id));
CREATE TABLE authority_policies (
  policy_id UUID PRIMARY KEY, principal_id UUID NOT NULL REFERENCES principals(principal_id),
  max_validity_seconds INTEGER NOT NULL, allowed_resource_patterns JSONB NOT NULL, allowed_actions JSONB NOT NULL,
  allow_delegation BOOLEAN NOT NULL, max_delegation_depth INTEGER NOT NULL,
  created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, created_by VARCHAR(255) NOT NULL, active BOOLEAN NOT NULL);
CREATE TABLE ledger_snapshots (
  snapshot_id UUID PRIMARY KEY, snapshot_timestamp TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  total_events BIGINT NOT NULL, merkle_root VARCHAR(64) NOT NULL, snapshot_data JSONB NOT NULL,
  created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL);
CREATE TABLE audit_logs (
  log_id BIGSERIAL PRIMARY KEY, event_id VARCHAR(255) NOT NULL, event_type VARCHAR(100) NOT NULL,
  topic VARCHAR(255) NOT NULL, partition BIGINT NOT NULL, "offset" BIGINT NOT NULL,
  event_timestamp TIMESTAMP WITHOUT TIME ZONE NOT NULL, logged_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
  agent_id UUID, correlation_id VARCHAR(255), event_data JSONB NOT NULL);
]]

-- Run one statement outside any transaction (CREATE/DROP DATABASE).
local function admin(sql)
  local m = testdb.manager({ pool_size = 1, max_overflow = 0 })
  local conn = m.pool:checkout("ledgerdb")
  local ok, err = pcall(conn.exec_script, conn, sql)
  conn:release()
  m:close()
  if not ok then error(err, 0) end
end

--- A fresh database with the schema at `target` ("head" by default, or
-- a revision id such as the baseline's).
-- @treturn table `{name, url, manager, schema = "migrations"|"fallback", close = fn}`
function M.create(prefix, target)
  assert(testdb.url, "CARACAL_TEST_URL is not set: run the specs through spec/run.sh")
  local name = string.format("%s_%s", prefix, core.uuid4():gsub("-", ""):sub(1, 12))
  admin('CREATE DATABASE "' .. name .. '"')
  local url = testdb.url:gsub("/[^/?]*$", "/" .. name, 1)
  local manager = db.create_connection_manager({ url = url, pool_size = 4, max_overflow = 4, pool_timeout = 10 })
  local h = { name = name, url = url, manager = manager }
  local ok, migrate = pcall(require, "caracal.migrate")
  if ok and type(migrate) == "table" and migrate.upgrade then
    migrate.upgrade(manager, target or "head", { dir = root .. "/migrations" })
    h.schema = "migrations"
  else
    manager:session_scope(function(s) s:execute_script(M.FALLBACK_DDL) end)
    h.schema = "fallback"
  end
  function h.close()
    manager:close()
    admin('DROP DATABASE IF EXISTS "' .. name .. '" WITH (FORCE)')
  end
  return h
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
