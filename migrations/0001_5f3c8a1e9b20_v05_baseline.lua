--- The v0.5 baseline: the database the original Python Caracal Core v0.5
-- builds (its models plus `init-db`), table for table, as described in
-- shared/spec/schema.md. A database made by that tool and stamped
-- `alembic_version = h7i8j9k0l1m2` has exactly this schema, so the runner
-- adopts it as this revision (see `adopt`).
--
-- Facts of the original kept here on purpose: no server defaults except
-- merkle_roots.source, naive TIMESTAMP columns, no CHECK constraints,
-- unique *indexes* (not constraints) on principals.name,
-- merkle_roots.batch_id and the audit log's (topic, partition, offset),
-- and PostgreSQL's default names for primary and foreign keys. Revision 2
-- hardens all of this.

-- The eight tables, in dependency order; down drops them in reverse.
local TABLES = { "principals", "execution_mandates", "merkle_roots", "ledger_events",
                 "authority_ledger_events", "authority_policies", "ledger_snapshots", "audit_logs" }

-- Index helpers: SQLAlchemy's `index=True` name, ix_<table>_<column>.
local function indexes(op, tbl, columns)
  for _, col in ipairs(columns) do
    op.create_index("ix_" .. tbl .. "_" .. col, tbl, col)
  end
end

return {
  revision = "5f3c8a1e9b20",
  down_revision = nil,
  message = "v0.5 baseline",
  adopt = { alembic = "h7i8j9k0l1m2", tables = TABLES },
  destructive_down = TABLES,

  up = function(op)
    op.create_table("principals", {
      { "principal_id", "UUID", primary_key = true },
      { "name", "VARCHAR(255)" },
      { "principal_type", "VARCHAR(50)" },
      { "owner", "VARCHAR(255)" },
      { "parent_principal_id", "UUID", nullable = true, references = "principals.principal_id" },
      { "public_key_pem", "VARCHAR(2000)", nullable = true },
      { "private_key_pem", "VARCHAR(4000)", nullable = true },
      { "created_at", "TIMESTAMP WITHOUT TIME ZONE" },
      { "metadata", "JSONB", nullable = true },
    })
    op.create_index("ix_principals_name", "principals", "name", { unique = true })
    indexes(op, "principals", { "principal_type", "parent_principal_id" })

    op.create_table("execution_mandates", {
      { "mandate_id", "UUID", primary_key = true },
      { "issuer_id", "UUID", references = "principals.principal_id" },
      { "subject_id", "UUID", references = "principals.principal_id" },
      { "valid_from", "TIMESTAMP WITHOUT TIME ZONE" },
      { "valid_until", "TIMESTAMP WITHOUT TIME ZONE" },
      { "resource_scope", "JSONB" },
      { "action_scope", "JSONB" },
      { "signature", "VARCHAR(512)" },
      { "created_at", "TIMESTAMP WITHOUT TIME ZONE" },
      { "metadata", "JSONB", nullable = true },
      { "revoked", "BOOLEAN" },
      { "revoked_at", "TIMESTAMP WITHOUT TIME ZONE", nullable = true },
      { "revocation_reason", "VARCHAR(1000)", nullable = true },
      { "parent_mandate_id", "UUID", nullable = true, references = "execution_mandates.mandate_id" },
      { "delegation_depth", "INTEGER" },
      { "intent_hash", "VARCHAR(64)", nullable = true },
    })
    indexes(op, "execution_mandates", { "issuer_id", "subject_id", "valid_from", "valid_until", "revoked",
                                        "parent_mandate_id" })

    op.create_table("merkle_roots", {
      { "root_id", "UUID", primary_key = true },
      { "batch_id", "UUID" },
      { "merkle_root", "VARCHAR(64)" },
      { "signature", "VARCHAR(512)" },
      { "event_count", "BIGINT" },
      { "first_event_id", "BIGINT" },
      { "last_event_id", "BIGINT" },
      { "source", "VARCHAR(50)", default = "'live'" },
      { "created_at", "TIMESTAMP WITHOUT TIME ZONE" },
    })
    op.create_index("ix_merkle_roots_batch_id", "merkle_roots", "batch_id", { unique = true })
    indexes(op, "merkle_roots", { "first_event_id", "last_event_id", "source", "created_at" })
    op.create_index("ix_merkle_roots_event_range", "merkle_roots", { "first_event_id", "last_event_id" })

    op.create_table("ledger_events", {
      { "event_id", "BIGSERIAL", primary_key = true },
      { "agent_id", "UUID", references = "principals.principal_id" },
      { "timestamp", "TIMESTAMP WITHOUT TIME ZONE" },
      { "resource_type", "VARCHAR(255)" },
      { "quantity", "NUMERIC(20,6)" },
      { "cost", "NUMERIC(20,6)" },
      { "currency", "VARCHAR(3)" },
      { "metadata", "JSONB", nullable = true },
      { "merkle_root_id", "UUID", nullable = true, references = "merkle_roots.root_id", on_delete = "SET NULL" },
    })
    indexes(op, "ledger_events", { "agent_id", "timestamp", "merkle_root_id" })
    op.create_index("ix_ledger_events_agent_timestamp", "ledger_events", { "agent_id", "timestamp" })

    op.create_table("authority_ledger_events", {
      { "event_id", "BIGSERIAL", primary_key = true },
      { "event_type", "VARCHAR(50)" },
      { "timestamp", "TIMESTAMP WITHOUT TIME ZONE" },
      { "principal_id", "UUID", references = "principals.principal_id" },
      { "mandate_id", "UUID", nullable = true, references = "execution_mandates.mandate_id" },
      { "decision", "VARCHAR(20)", nullable = true },
      { "denial_reason", "VARCHAR(1000)", nullable = true },
      { "requested_action", "VARCHAR(255)", nullable = true },
      { "requested_resource", "VARCHAR(1000)", nullable = true },
      { "event_metadata", "JSONB", nullable = true },
      { "correlation_id", "VARCHAR(255)", nullable = true },
      { "merkle_root_id", "UUID", nullable = true, references = "merkle_roots.root_id" },
    })
    indexes(op, "authority_ledger_events", { "event_type", "timestamp", "principal_id", "mandate_id",
                                             "correlation_id", "merkle_root_id" })
    op.create_index("ix_authority_ledger_events_principal_timestamp", "authority_ledger_events",
                    { "principal_id", "timestamp" })
    op.create_index("ix_authority_ledger_events_mandate_timestamp", "authority_ledger_events",
                    { "mandate_id", "timestamp" })

    op.create_table("authority_policies", {
      { "policy_id", "UUID", primary_key = true },
      { "principal_id", "UUID", references = "principals.principal_id" },
      { "max_validity_seconds", "INTEGER" },
      { "allowed_resource_patterns", "JSONB" },
      { "allowed_actions", "JSONB" },
      { "allow_delegation", "BOOLEAN" },
      { "max_delegation_depth", "INTEGER" },
      { "created_at", "TIMESTAMP WITHOUT TIME ZONE" },
      { "created_by", "VARCHAR(255)" },
      { "active", "BOOLEAN" },
    })
    indexes(op, "authority_policies", { "principal_id", "active" })
    op.create_index("ix_authority_policies_principal_active", "authority_policies", { "principal_id", "active" })

    op.create_table("ledger_snapshots", {
      { "snapshot_id", "UUID", primary_key = true },
      { "snapshot_timestamp", "TIMESTAMP WITHOUT TIME ZONE" },
      { "total_events", "BIGINT" },
      { "merkle_root", "VARCHAR(64)" },
      { "snapshot_data", "JSONB" },
      { "created_at", "TIMESTAMP WITHOUT TIME ZONE" },
    })
    indexes(op, "ledger_snapshots", { "snapshot_timestamp", "created_at" })

    op.create_table("audit_logs", {
      { "log_id", "BIGSERIAL", primary_key = true },
      { "event_id", "VARCHAR(255)" },
      { "event_type", "VARCHAR(100)" },
      { "topic", "VARCHAR(255)" },
      { "partition", "BIGINT" },
      { "offset", "BIGINT" },
      { "event_timestamp", "TIMESTAMP WITHOUT TIME ZONE" },
      { "logged_at", "TIMESTAMP WITHOUT TIME ZONE" },
      { "agent_id", "UUID", nullable = true },
      { "correlation_id", "VARCHAR(255)", nullable = true },
      { "event_data", "JSONB" },
    })
    indexes(op, "audit_logs", { "event_id", "event_type", "topic", "event_timestamp", "logged_at", "agent_id",
                                "correlation_id" })
    op.create_index("ix_audit_logs_agent_timestamp", "audit_logs", { "agent_id", "event_timestamp" })
    op.create_index("ix_audit_logs_type_timestamp", "audit_logs", { "event_type", "event_timestamp" })
    op.create_index("ix_audit_logs_correlation", "audit_logs", { "correlation_id", "event_timestamp" })
    op.create_index("ix_audit_logs_topic_partition_offset", "audit_logs", { "topic", "partition", "offset" },
                    { unique = true })
  end,

  down = function(op)
    for i = #TABLES, 1, -1 do op.drop_table(TABLES[i]) end
  end,
}
