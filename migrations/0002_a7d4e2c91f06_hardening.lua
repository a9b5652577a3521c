--- Hardening of the v0.5 schema (shared/spec/schema.md, "Revision 2"):
-- what users of the original gain by upgrading.
--
--  * every timestamp becomes TIMESTAMPTZ, the stored naive values read as UTC;
--  * server defaults matching the client-side ones, so plain SQL inserts work;
--  * CHECK constraints on ranges, currencies, event types and JSON arrays;
--  * the seed's (subject_id, valid_until) index on execution_mandates;
--  * at most one active policy per principal (a partial unique index);
--  * append-only ledgers: UPDATE, DELETE and TRUNCATE on ledger_events,
--    authority_ledger_events and audit_logs fail with SQLSTATE CA001,
--    except the one change batching needs: setting a NULL merkle_root_id.
--
-- `down` restores revision 1 exactly. Existing rows that break a new
-- CHECK (or two active policies of one principal) make the upgrade fail
-- and roll back, naming the constraint: fix the data, then upgrade.

-- Timestamp columns, table by table (one ALTER TABLE, so one rewrite, each).
local TIMESTAMPS = {
  { "principals", { "created_at" } },
  { "execution_mandates", { "valid_from", "valid_until", "created_at", "revoked_at" } },
  { "merkle_roots", { "created_at" } },
  { "ledger_events", { "timestamp" } },
  { "authority_ledger_events", { "timestamp" } },
  { "authority_policies", { "created_at" } },
  { "ledger_snapshots", { "snapshot_timestamp", "created_at" } },
  { "audit_logs", { "event_timestamp", "logged_at" } },
}

-- The client-side defaults of schema.md, as server defaults.
local DEFAULTS = {
  { "principals", "principal_id", "gen_random_uuid()" },
  { "principals", "created_at", "now()" },
  { "execution_mandates", "mandate_id", "gen_random_uuid()" },
  { "execution_mandates", "created_at", "now()" },
  { "execution_mandates", "revoked", "false" },
  { "execution_mandates", "delegation_depth", "0" },
  { "merkle_roots", "root_id", "gen_random_uuid()" },
  { "merkle_roots", "created_at", "now()" },
  { "ledger_events", "timestamp", "now()" },
  { "ledger_events", "currency", "'USD'" },
  { "authority_ledger_events", "timestamp", "now()" },
  { "authority_policies", "policy_id", "gen_random_uuid()" },
  { "authority_policies", "created_at", "now()" },
  { "authority_policies", "allow_delegation", "false" },
  { "authority_policies", "max_delegation_depth", "0" },
  { "authority_policies", "active", "true" },
  { "ledger_snapshots", "snapshot_id", "gen_random_uuid()" },
  { "ledger_snapshots", "created_at", "now()" },
}

local CHECKS = {
  { "ck_execution_mandates_valid_range", "execution_mandates", "valid_until > valid_from" },
  { "ck_execution_mandates_delegation_depth", "execution_mandates", "delegation_depth >= 0" },
  { "ck_execution_mandates_resource_scope_array", "execution_mandates", "jsonb_typeof(resource_scope) = 'array'" },
  { "ck_execution_mandates_action_scope_array", "execution_mandates", "jsonb_typeof(action_scope) = 'array'" },
  { "ck_ledger_events_quantity", "ledger_events", "quantity >= 0" },
  { "ck_ledger_events_cost", "ledger_events", "cost >= 0" },
  { "ck_ledger_events_currency", "ledger_events", "currency ~ '^[A-Z]{3}$'" },
  { "ck_authority_ledger_events_event_type", "authority_ledger_events",
    "event_type IN ('issued', 'validated', 'denied', 'revoked')" },
  { "ck_authority_ledger_events_decision", "authority_ledger_events",
    "decision IS NULL OR decision IN ('allowed', 'denied')" },
  { "ck_authority_policies_max_validity", "authority_policies", "max_validity_seconds > 0" },
  { "ck_authority_policies_resource_patterns_array", "authority_policies",
    "jsonb_typeof(allowed_resource_patterns) = 'array'" },
  { "ck_authority_policies_actions_array", "authority_policies", "jsonb_typeof(allowed_actions) = 'array'" },
}

-- Append-only tables and the column batching may set once (nil: none).
local LEDGERS = {
  { "ledger_events", "merkle_root_id" },
  { "authority_ledger_events", "merkle_root_id" },
  { "audit_logs", nil },
}

-- One guard for every ledger. Row trigger (UPDATE, DELETE): the only
-- change let through is TG_ARGV[0] going from NULL to a value with every
-- other column unchanged (compared as jsonb without that key). Statement
-- trigger (TRUNCATE): always rejected. The SQLSTATE is Caracal's own,
-- CA001, so clients can tell this refusal from any other error.
local GUARD_FUNCTION = [[
CREATE FUNCTION caracal_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $guard$
DECLARE
  batch_column text := CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0] END;
  detail text;
BEGIN
  IF TG_OP = 'UPDATE' AND batch_column IS NOT NULL THEN
    IF (to_jsonb(OLD) ->> batch_column) IS NULL
       AND (to_jsonb(NEW) ->> batch_column) IS NOT NULL
       AND (to_jsonb(NEW) - batch_column) = (to_jsonb(OLD) - batch_column) THEN
      RETURN NEW;
    END IF;
    detail := CASE WHEN (to_jsonb(OLD) ->> batch_column) IS NOT NULL
                   THEN batch_column || ' is already set'
                   ELSE 'an update may only set a NULL ' || batch_column || ' and change nothing else' END;
    RAISE EXCEPTION '% is append-only: UPDATE is not allowed (only setting % once)', TG_TABLE_NAME, batch_column
      USING ERRCODE = 'CA001', DETAIL = detail,
            HINT = 'ledger rows are never changed or removed; record a correcting event instead';
  END IF;
  RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'CA001',
          HINT = 'ledger rows are never changed or removed; record a correcting event instead';
END
$guard$]]

local function retype(op, tbl, columns, new_type)
  local parts = {}
  for _, col in ipairs(columns) do
    local c = op.ident(col)
    parts[#parts + 1] = "ALTER COLUMN " .. c .. " TYPE " .. new_type .. " USING " .. c .. " AT TIME ZONE 'UTC'"
  end
  op.execute("ALTER TABLE " .. op.ident(tbl) .. " " .. table.concat(parts, ", "))
end

return {
  revision = "a7d4e2c91f06",
  down_revision = "5f3c8a1e9b20",
  message = "hardening",

  up = function(op)
    for _, t in ipairs(TIMESTAMPS) do retype(op, t[1], t[2], "TIMESTAMPTZ") end
    for _, d in ipairs(DEFAULTS) do op.alter_column(d[1], d[2], { default = d[3] }) end
    for _, c in ipairs(CHECKS) do op.create_check_constraint(c[1], c[2], c[3]) end
    op.create_index("ix_execution_mandates_subject_valid_until", "execution_mandates",
                    { "subject_id", "valid_until" })
    op.create_index("uq_authority_policies_one_active", "authority_policies", "principal_id",
                    { unique = true, where = "active" })
    op.execute(GUARD_FUNCTION)
    for _, l in ipairs(LEDGERS) do
      local tbl, batch = l[1], l[2]
      op.execute("CREATE TRIGGER " .. op.ident(tbl .. "_append_only") .. " BEFORE UPDATE OR DELETE ON " ..
                 op.ident(tbl) .. " FOR EACH ROW EXECUTE FUNCTION caracal_ledger_append_only(" ..
                 (batch and op.literal(batch) or "") .. ")")
      op.execute("CREATE TRIGGER " .. op.ident(tbl .. "_no_truncate") .. " BEFORE TRUNCATE ON " ..
                 op.ident(tbl) .. " FOR EACH STATEMENT EXECUTE FUNCTION caracal_ledger_append_only()")
    end
  end,

  down = function(op)
    for i = #LEDGERS, 1, -1 do
      local tbl = LEDGERS[i][1]
      op.execute("DROP TRIGGER " .. op.ident(tbl .. "_no_truncate") .. " ON " .. op.ident(tbl))
      op.execute("DROP TRIGGER " .. op.ident(tbl .. "_append_only") .. " ON " .. op.ident(tbl))
    end
    op.execute("DROP FUNCTION caracal_ledger_append_only()")
    op.drop_index("uq_authority_policies_one_active")
    op.drop_index("ix_execution_mandates_subject_valid_until")
    for i = #CHECKS, 1, -1 do op.drop_constraint(CHECKS[i][1], CHECKS[i][2]) end
    for i = #DEFAULTS, 1, -1 do op.alter_column(DEFAULTS[i][1], DEFAULTS[i][2], { default = false }) end
    for i = #TIMESTAMPS, 1, -1 do
      retype(op, TIMESTAMPS[i][1], TIMESTAMPS[i][2], "TIMESTAMP WITHOUT TIME ZONE")
    end
  end,
}
