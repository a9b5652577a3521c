--- The one declaration of every Caracal table, from shared/spec/schema.md.
--
-- Constructors, inserts, queries and the schema check against a live
-- database all read these declarations; nothing else lists columns.
-- Each column: `name` (the SQL column), `attr` (the Lua field when it
-- differs: the seed's `principal_metadata` ...), `type`, `length` or
-- `precision`/`scale`, `nullable`, `primary_key`, `unique`, `serial` (the
-- server assigns it), `default` (the client-side default: a value or a
-- function), `values` (an enumeration), `json` ("array" for JSON arrays of
-- strings, "object" for JSON objects), `references` ("table.column").
--
-- Types: uuid, varchar, integer, bigint, boolean, numeric, timestamp,
-- jsonb. Timestamps are UTC instants; revision 1 stores them naive
-- (TIMESTAMP), revision 2 as TIMESTAMPTZ; both decode to `caracal.Instant`.
-- @module caracal.schema
local core = require "caracal.core"

local M = {}

local function uuid4() return core.uuid4() end
local function now() return core.utcnow() end

local PRINCIPAL_TYPES = { "agent", "user", "service" }
local AUTHORITY_EVENTS = { "issued", "validated", "denied", "revoked" }
local DECISIONS = { "allowed", "denied" }
local ROOT_SOURCES = { "live", "migration" }

--- Tables in dependency order (a table's references come before it).
M.tables = {
  {
    name = "principals", model = "Principal",
    columns = {
      { name = "principal_id", type = "uuid", primary_key = true, default = uuid4 },
      { name = "name", type = "varchar", length = 255, unique = true },
      { name = "principal_type", type = "varchar", length = 50, values = PRINCIPAL_TYPES },
      { name = "owner", type = "varchar", length = 255 },
      { name = "parent_principal_id", type = "uuid", nullable = true, references = "principals.principal_id" },
      { name = "public_key_pem", type = "varchar", length = 2000, nullable = true },
      { name = "private_key_pem", type = "varchar", length = 4000, nullable = true, secret = true },
      { name = "created_at", type = "timestamp", default = now },
      { name = "metadata", attr = "principal_metadata", type = "jsonb", json = "object", nullable = true },
    },
    show = { "name", "principal_type", "owner" },
  },
  {
    name = "execution_mandates", model = "ExecutionMandate",
    columns = {
      { name = "mandate_id", type = "uuid", primary_key = true, default = uuid4 },
      { name = "issuer_id", type = "uuid", references = "principals.principal_id" },
      { name = "subject_id", type = "uuid", references = "principals.principal_id" },
      { name = "valid_from", type = "timestamp" },
      { name = "valid_until", type = "timestamp" },
      { name = "resource_scope", type = "jsonb", json = "array" },
      { name = "action_scope", type = "jsonb", json = "array" },
      { name = "signature", type = "varchar", length = 512 },
      { name = "created_at", type = "timestamp", default = now },
      { name = "metadata", attr = "mandate_metadata", type = "jsonb", json = "object", nullable = true },
      { name = "revoked", type = "boolean", default = false },
      { name = "revoked_at", type = "timestamp", nullable = true },
      { name = "revocation_reason", type = "varchar", length = 1000, nullable = true },
      { name = "parent_mandate_id", type = "uuid", nullable = true, references = "execution_mandates.mandate_id" },
      { name = "delegation_depth", type = "integer", default = 0 },
      { name = "intent_hash", type = "varchar", length = 64, nullable = true },
    },
    show = { "subject_id", "valid_until", "revoked" },
  },
  {
    name = "merkle_roots", model = "MerkleRoot",
    columns = {
      { name = "root_id", type = "uuid", primary_key = true, default = uuid4 },
      { name = "batch_id", type = "uuid", unique = true, default = uuid4 },
      { name = "merkle_root", type = "varchar", length = 64 },
      { name = "signature", type = "varchar", length = 512 },
      { name = "event_count", type = "bigint" },
      { name = "first_event_id", type = "bigint" },
      { name = "last_event_id", type = "bigint" },
      { name = "source", type = "varchar", length = 50, default = "live", values = ROOT_SOURCES },
      { name = "created_at", type = "timestamp", default = now },
    },
    show = { "first_event_id", "last_event_id", "merkle_root" },
  },
  {
    name = "ledger_events", model = "LedgerEvent", append_only = true,
    columns = {
      { name = "event_id", type = "bigint", primary_key = true, serial = true },
      { name = "agent_id", type = "uuid", references = "principals.principal_id" },
      { name = "timestamp", type = "timestamp", default = now },
      { name = "resource_type", type = "varchar", length = 255 },
      { name = "quantity", type = "numeric", precision = 20, scale = 6 },
      { name = "cost", type = "numeric", precision = 20, scale = 6 },
      { name = "currency", type = "varchar", length = 3, default = "USD", pattern = "^[A-Z][A-Z][A-Z]$",
        pattern_text = "three upper-case letters" },
      { name = "metadata", attr = "event_metadata", type = "jsonb", json = "object", nullable = true },
      { name = "merkle_root_id", type = "uuid", nullable = true, references = "merkle_roots.root_id" },
    },
    show = { "agent_id", "cost", "currency" },
  },
  {
    name = "authority_ledger_events", model = "AuthorityLedgerEvent", append_only = true,
    columns = {
      { name = "event_id", type = "bigint", primary_key = true, serial = true },
      { name = "event_type", type = "varchar", length = 50, values = AUTHORITY_EVENTS },
      { name = "timestamp", type = "timestamp", default = now },
      { name = "principal_id", type = "uuid", references = "principals.principal_id" },
      { name = "mandate_id", type = "uuid", nullable = true, references = "execution_mandates.mandate_id" },
      { name = "decision", type = "varchar", length = 20, nullable = true, values = DECISIONS },
      { name = "denial_reason", type = "varchar", length = 1000, nullable = true },
      { name = "requested_action", type = "varchar", length = 255, nullable = true },
      { name = "requested_resource", type = "varchar", length = 1000, nullable = true },
      { name = "event_metadata", type = "jsonb", json = "object", nullable = true },
      { name = "correlation_id", type = "varchar", length = 255, nullable = true },
      { name = "merkle_root_id", type = "uuid", nullable = true, references = "merkle_roots.root_id" },
    },
    show = { "event_type", "principal_id", "decision" },
  },
  {
    name = "authority_policies", model = "AuthorityPolicy",
    columns = {
      { name = "policy_id", type = "uuid", primary_key = true, default = uuid4 },
      { name = "principal_id", type = "uuid", references = "principals.principal_id" },
      { name = "max_validity_seconds", type = "integer", min = 1 },
      { name = "allowed_resource_patterns", type = "jsonb", json = "array" },
      { name = "allowed_actions", type = "jsonb", json = "array" },
      { name = "allow_delegation", type = "boolean", default = false },
      { name = "max_delegation_depth", type = "integer", default = 0, min = 0 },
      { name = "created_at", type = "timestamp", default = now },
      { name = "created_by", type = "varchar", length = 255 },
      { name = "active", type = "boolean", default = true },
    },
    show = { "principal_id", "active" },
  },
  {
    name = "ledger_snapshots", model = "LedgerSnapshot",
    columns = {
      { name = "snapshot_id", type = "uuid", primary_key = true, default = uuid4 },
      { name = "snapshot_timestamp", type = "timestamp", default = now },
      { name = "total_events", type = "bigint" },
      { name = "merkle_root", type = "varchar", length = 64 },
      { name = "snapshot_data", type = "jsonb", json = "object" },
      { name = "created_at", type = "timestamp", default = now },
    },
    show = { "snapshot_timestamp", "total_events" },
  },
  {
    name = "audit_logs", model = "AuditLog", append_only = true,
    columns = {
      { name = "log_id", type = "bigint", primary_key = true, serial = true },
      { name = "event_id", type = "varchar", length = 255 },
      { name = "event_type", type = "varchar", length = 100 },
      { name = "topic", type = "varchar", length = 255 },
      { name = "partition", type = "bigint" },
      { name = "offset", type = "bigint" },
      { name = "event_timestamp", type = "timestamp" },
      { name = "logged_at", type = "timestamp", default = now },
      { name = "agent_id", type = "uuid", nullable = true },
      { name = "correlation_id", type = "varchar", length = 255, nullable = true },
      { name = "event_data", type = "jsonb", json = "object" },
    },
    show = { "event_type", "topic" },
  },
}

-- Index the declarations: by table name and by model name; each column
-- gets its attribute name and nullability made explicit.
M.by_table, M.by_model = {}, {}
for _, t in ipairs(M.tables) do
  t.by_attr, t.by_column = {}, {}
  for _, c in ipairs(t.columns) do
    c.attr = c.attr or c.name
    c.nullable = c.nullable or false
    t.by_attr[c.attr] = c
    t.by_column[c.name] = c
    if c.primary_key then t.primary_key = c end
  end
  M.by_table[t.name] = t
  M.by_model[t.model] = t
end

return M
