-- The schema the migrations build, checked against shared/spec/schema.md
-- table by table (columns from information_schema, indexes and keys from
-- the catalog), and the behaviour revision 2 adds: server defaults,
-- CHECK constraints, one active policy per principal, and append-only
-- ledgers. Each describe block works in its own fresh database.
local core = require "caracal.core"
local db = require "caracal.db"
local migrate = require "caracal.migrate"
local testdb = require "testdb"

local MIGRATIONS = (os.getenv("CARACAL_ROOT") or ".") .. "/migrations"
local REV1, REV2 = "5f3c8a1e9b20", "a7d4e2c91f06"

-- A fresh database: name, manager, drop().
local function fresh(prefix)
  return testdb.fresh_database("schema_" .. prefix, { pool_size = 3 })
end

---------------------------------------------------------------------------
-- schema.md, revision 1: "column type NULL|NOT NULL [DEFAULT ...]" in order
---------------------------------------------------------------------------

local TS = "timestamp without time zone"
local REVISION_1 = {
  principals = {
    columns = {
      "principal_id uuid NOT NULL", "name varchar(255) NOT NULL", "principal_type varchar(50) NOT NULL",
      "owner varchar(255) NOT NULL", "parent_principal_id uuid NULL", "public_key_pem varchar(2000) NULL",
      "private_key_pem varchar(4000) NULL", "created_at " .. TS .. " NOT NULL", "metadata jsonb NULL",
    },
    indexes = { "principals_pkey UNIQUE (principal_id)", "ix_principals_name UNIQUE (name)",
      "ix_principals_principal_type (principal_type)", "ix_principals_parent_principal_id (parent_principal_id)" },
    constraints = { "principals_pkey PRIMARY KEY (principal_id)",
      "principals_parent_principal_id_fkey FOREIGN KEY (parent_principal_id) REFERENCES principals(principal_id)" },
  },
  execution_mandates = {
    columns = {
      "mandate_id uuid NOT NULL", "issuer_id uuid NOT NULL", "subject_id uuid NOT NULL",
      "valid_from " .. TS .. " NOT NULL", "valid_until " .. TS .. " NOT NULL", "resource_scope jsonb NOT NULL",
      "action_scope jsonb NOT NULL", "signature varchar(512) NOT NULL", "created_at " .. TS .. " NOT NULL",
      "metadata jsonb NULL", "revoked boolean NOT NULL", "revoked_at " .. TS .. " NULL",
      "revocation_reason varchar(1000) NULL", "parent_mandate_id uuid NULL", "delegation_depth integer NOT NULL",
      "intent_hash varchar(64) NULL",
    },
    indexes = { "execution_mandates_pkey UNIQUE (mandate_id)", "ix_execution_mandates_issuer_id (issuer_id)",
      "ix_execution_mandates_subject_id (subject_id)", "ix_execution_mandates_valid_from (valid_from)",
      "ix_execution_mandates_valid_until (valid_until)", "ix_execution_mandates_revoked (revoked)",
      "ix_execution_mandates_parent_mandate_id (parent_mandate_id)" },
    constraints = { "execution_mandates_pkey PRIMARY KEY (mandate_id)",
      "execution_mandates_issuer_id_fkey FOREIGN KEY (issuer_id) REFERENCES principals(principal_id)",
      "execution_mandates_subject_id_fkey FOREIGN KEY (subject_id) REFERENCES principals(principal_id)",
      "execution_mandates_parent_mandate_id_fkey FOREIGN KEY (parent_mandate_id) REFERENCES execution_mandates(mandate_id)" },
  },
  ledger_events = {
    columns = {
      "event_id bigint NOT NULL DEFAULT nextval('ledger_events_event_id_seq'::regclass)",
      "agent_id uuid NOT NULL", "timestamp " .. TS .. " NOT NULL", "resource_type varchar(255) NOT NULL",
      "quantity numeric(20,6) NOT NULL", "cost numeric(20,6) NOT NULL", "currency varchar(3) NOT NULL",
      "metadata jsonb NULL", "merkle_root_id uuid NULL",
    },
    indexes = { "ledger_events_pkey UNIQUE (event_id)", "ix_ledger_events_agent_id (agent_id)",
      "ix_ledger_events_timestamp (timestamp)", "ix_ledger_events_merkle_root_id (merkle_root_id)",
      "ix_ledger_events_agent_timestamp (agent_id, timestamp)" },
    constraints = { "ledger_events_pkey PRIMARY KEY (event_id)",
      "ledger_events_agent_id_fkey FOREIGN KEY (agent_id) REFERENCES principals(principal_id)",
      "ledger_events_merkle_root_id_fkey FOREIGN KEY (merkle_root_id) REFERENCES merkle_roots(root_id) ON DELETE SET NULL" },
  },
  authority_ledger_events = {
    columns = {
      "event_id bigint NOT NULL DEFAULT nextval('authority_ledger_events_event_id_seq'::regclass)",
      "event_type varchar(50) NOT NULL", "timestamp " .. TS .. " NOT NULL", "principal_id uuid NOT NULL",
      "mandate_id uuid NULL", "decision varchar(20) NULL", "denial_reason varchar(1000) NULL",
      "requested_action varchar(255) NULL", "requested_resource varchar(1000) NULL", "event_metadata jsonb NULL",
      "correlation_id varchar(255) NULL", "merkle_root_id uuid NULL",
    },
    indexes = { "authority_ledger_events_pkey UNIQUE (event_id)",
      "ix_authority_ledger_events_event_type (event_type)", "ix_authority_ledger_events_timestamp (timestamp)",
      "ix_authority_ledger_events_principal_id (principal_id)", "ix_authority_ledger_events_mandate_id (mandate_id)",
      "ix_authority_ledger_events_correlation_id (correlation_id)",
      "ix_authority_ledger_events_merkle_root_id (merkle_root_id)",
      "ix_authority_ledger_events_principal_timestamp (principal_id, timestamp)",
      "ix_authority_ledger_events_mandate_timestamp (mandate_id, timestamp)" },
    constraints = { "authority_ledger_events_pkey PRIMARY KEY (event_id)",
      "authority_ledger_events_principal_id_fkey FOREIGN KEY (principal_id) REFERENCES principals(principal_id)",
      "authority_ledger_events_mandate_id_fkey FOREIGN KEY (mandate_id) REFERENCES execution_mandates(mandate_id)",
      "authority_ledger_events_merkle_root_id_fkey FOREIGN KEY (merkle_root_id) REFERENCES merkle_roots(root_id)" },
  },
  authority_policies = {
    columns = {
      "policy_id uuid NOT NULL", "principal_id uuid NOT NULL", "max_validity_seconds integer NOT NULL",
      "allowed_resource_patterns jsonb NOT NULL", "allowed_actions jsonb NOT NULL",
      "allow_delegation boolean NOT NULL", "max_delegation_depth integer NOT NULL",
      "created_at " .. TS .. " NOT NULL", "created_by varchar(255) NOT NULL", "active boolean NOT NULL",
    },
    indexes = { "authority_policies_pkey UNIQUE (policy_id)", "ix_authority_policies_principal_id (principal_id)",
      "ix_authority_policies_active (active)", "ix_authority_policies_principal_active (principal_id, active)" },
    constraints = { "authority_policies_pkey PRIMARY KEY (policy_id)",
      "authority_policies_principal_id_fkey FOREIGN KEY (principal_id) REFERENCES principals(principal_id)" },
  },
  merkle_roots = {
    columns = {
      "root_id uuid NOT NULL", "batch_id uuid NOT NULL", "merkle_root varchar(64) NOT NULL",
      "signature varchar(512) NOT NULL", "event_count bigint NOT NULL", "first_event_id bigint NOT NULL",
      "last_event_id bigint NOT NULL", "source varchar(50) NOT NULL DEFAULT 'live'::character varying",
      "created_at " .. TS .. " NOT NULL",
    },
    indexes = { "merkle_roots_pkey UNIQUE (root_id)", "ix_merkle_roots_batch_id UNIQUE (batch_id)",
      "ix_merkle_roots_first_event_id (first_event_id)", "ix_merkle_roots_last_event_id (last_event_id)",
      "ix_merkle_roots_source (source)", "ix_merkle_roots_created_at (created_at)",
      "ix_merkle_roots_event_range (first_event_id, last_event_id)" },
    constraints = { "merkle_roots_pkey PRIMARY KEY (root_id)" },
  },
  ledger_snapshots = {
    columns = {
      "snapshot_id uuid NOT NULL", "snapshot_timestamp " .. TS .. " NOT NULL", "total_events bigint NOT NULL",
      "merkle_root varchar(64) NOT NULL", "snapshot_data jsonb NOT NULL", "created_at " .. TS .. " NOT NULL",
    },
    indexes = { "ledger_snapshots_pkey UNIQUE (snapshot_id)",
      "ix_ledger_snapshots_snapshot_timestamp (snapshot_timestamp)", "ix_ledger_snapshots_created_at (created_at)" },
    constraints = { "ledger_snapshots_pkey PRIMARY KEY (snapshot_id)" },
  },
  audit_logs = {
    columns = {
      "log_id bigint NOT NULL DEFAULT nextval('audit_logs_log_id_seq'::regclass)",
      "event_id varchar(255) NOT NULL", "event_type varchar(100) NOT NULL", "topic varchar(255) NOT NULL",
      "partition bigint NOT NULL", "offset bigint NOT NULL", "event_timestamp " .. TS .. " NOT NULL",
      "logged_at " .. TS .. " NOT NULL", "agent_id uuid NULL", "correlation_id varchar(255) NULL",
      "event_data jsonb NOT NULL",
    },
    indexes = { "audit_logs_pkey UNIQUE (log_id)", "ix_audit_logs_event_id (event_id)",
      "ix_audit_logs_event_type (event_type)", "ix_audit_logs_topic (topic)",
      "ix_audit_logs_event_timestamp (event_timestamp)", "ix_audit_logs_logged_at (logged_at)",
      "ix_audit_logs_agent_id (agent_id)", "ix_audit_logs_correlation_id (correlation_id)",
      "ix_audit_logs_agent_timestamp (agent_id, event_timestamp)",
      "ix_audit_logs_type_timestamp (event_type, event_timestamp)",
      "ix_audit_logs_correlation (correlation_id, event_timestamp)",
      "ix_audit_logs_topic_partition_offset UNIQUE (topic, partition, offset)" },
    constraints = { "audit_logs_pkey PRIMARY KEY (log_id)" },
  },
}

-- Revision 2 (schema.md "hardening"): timestamps become timestamptz; these
-- server defaults, checks and indexes are added.
local HEAD_DEFAULTS = {
  ["principals.principal_id"] = "gen_random_uuid()", ["principals.created_at"] = "now()",
  ["execution_mandates.mandate_id"] = "gen_random_uuid()", ["execution_mandates.created_at"] = "now()",
  ["execution_mandates.revoked"] = "false", ["execution_mandates.delegation_depth"] = "0",
  ["merkle_roots.root_id"] = "gen_random_uuid()", ["merkle_roots.created_at"] = "now()",
  ["ledger_events.timestamp"] = "now()", ["ledger_events.currency"] = "'USD'::character varying",
  ["authority_ledger_events.timestamp"] = "now()",
  ["authority_policies.policy_id"] = "gen_random_uuid()", ["authority_policies.created_at"] = "now()",
  ["authority_policies.allow_delegation"] = "false", ["authority_policies.max_delegation_depth"] = "0",
  ["authority_policies.active"] = "true",
  ["ledger_snapshots.snapshot_id"] = "gen_random_uuid()", ["ledger_snapshots.created_at"] = "now()",
}
local HEAD_INDEXES = {
  execution_mandates = { "ix_execution_mandates_subject_valid_until (subject_id, valid_until)" },
  authority_policies = { "uq_authority_policies_one_active UNIQUE (principal_id) WHERE active" },
}
local HEAD_CONSTRAINTS = {
  execution_mandates = { "ck_execution_mandates_valid_range CHECK ((valid_until > valid_from))",
    "ck_execution_mandates_delegation_depth CHECK ((delegation_depth >= 0))",
    "ck_execution_mandates_resource_scope_array CHECK ((jsonb_typeof(resource_scope) = 'array'::text))",
    "ck_execution_mandates_action_scope_array CHECK ((jsonb_typeof(action_scope) = 'array'::text))" },
  ledger_events = { "ck_ledger_events_quantity CHECK ((quantity >= (0)::numeric))",
    "ck_ledger_events_cost CHECK ((cost >= (0)::numeric))",
    "ck_ledger_events_currency CHECK (((currency)::text ~ '^[A-Z]{3}$'::text))" },
  authority_ledger_events = {
    "ck_authority_ledger_events_event_type CHECK (((event_type)::text = ANY ((ARRAY['issued'::character varying, " ..
      "'validated'::character varying, 'denied'::character varying, 'revoked'::character varying])::text[])))",
    "ck_authority_ledger_events_decision CHECK (((decision IS NULL) OR ((decision)::text = ANY " ..
      "((ARRAY['allowed'::character varying, 'denied'::character varying])::text[]))))" },
  authority_policies = { "ck_authority_policies_max_validity CHECK ((max_validity_seconds > 0))",
    "ck_authority_policies_resource_patterns_array CHECK ((jsonb_typeof(allowed_resource_patterns) = 'array'::text))",
    "ck_authority_policies_actions_array CHECK ((jsonb_typeof(allowed_actions) = 'array'::text))" },
}

local function head_expectation(tbl)
  local e = REVISION_1[tbl]
  local cols = {}
  for i, c in ipairs(e.columns) do
    local name = c:match("^(%S+)")
    c = c:gsub(TS, "timestamp with time zone")
    local d = HEAD_DEFAULTS[tbl .. "." .. name]
    if d then c = c .. " DEFAULT " .. d end
    cols[i] = c
  end
  local idx, cons = {}, {}
  for _, v in ipairs(e.indexes) do idx[#idx + 1] = v end
  for _, v in ipairs(HEAD_INDEXES[tbl] or {}) do idx[#idx + 1] = v end
  for _, v in ipairs(e.constraints) do cons[#cons + 1] = v end
  for _, v in ipairs(HEAD_CONSTRAINTS[tbl] or {}) do cons[#cons + 1] = v end
  return { columns = cols, indexes = idx, constraints = cons }
end

-- The catalog's view of a table in the expectation's shape.
local function actual(m, tbl)
  local out = { columns = {}, indexes = {}, constraints = {} }
  m:session_scope(function(s)
    for _, r in ipairs(s:execute([[select column_name::text as name,
        case when data_type = 'character varying' then 'varchar(' || character_maximum_length || ')'
             when data_type = 'numeric' then 'numeric(' || numeric_precision || ',' || numeric_scale || ')'
             else data_type end as type,
        is_nullable = 'YES' as nullable, column_default::text as def
      from information_schema.columns
      where table_schema = current_schema() and table_name = $1::text order by ordinal_position]], tbl)) do
      out.columns[#out.columns + 1] = r.name .. " " .. r.type .. (r.nullable and " NULL" or " NOT NULL") ..
        (r.def and (" DEFAULT " .. r.def) or "")
    end
    for _, r in ipairs(s:execute([[select i.relname::text as name, x.indisunique as uniq,
        (select string_agg(a.attname::text, ', ' order by k.ord) from unnest(x.indkey) with ordinality k(attnum, ord)
           join pg_attribute a on a.attrelid = x.indrelid and a.attnum = k.attnum) as cols,
        pg_get_expr(x.indpred, x.indrelid) as pred
      from pg_index x join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
      where t.relname = $1::text and t.relnamespace = current_schema()::regnamespace]], tbl)) do
      out.indexes[#out.indexes + 1] = r.name .. (r.uniq and " UNIQUE" or "") .. " (" .. r.cols .. ")" ..
        (r.pred and (" WHERE " .. r.pred) or "")
    end
    for _, r in ipairs(s:execute([[select conname::text as name, pg_get_constraintdef(c.oid) as def
      from pg_constraint c join pg_class t on t.oid = c.conrelid
      where t.relname = $1::text and t.relnamespace = current_schema()::regnamespace]], tbl)) do
      out.constraints[#out.constraints + 1] = r.name .. " " .. r.def
    end
  end)
  table.sort(out.indexes)
  table.sort(out.constraints)
  return out
end

local function sorted(e)
  local c = { columns = e.columns, indexes = {}, constraints = {} }
  for i, v in ipairs(e.indexes) do c.indexes[i] = v end
  for i, v in ipairs(e.constraints) do c.constraints[i] = v end
  table.sort(c.indexes)
  table.sort(c.constraints)
  return c
end

local function user_tables(m)
  local out = {}
  for _, r in ipairs(m:execute("select tablename::text as t from pg_tables where schemaname = current_schema() " ..
                               "order by tablename")) do out[#out + 1] = r.t end
  return out
end

describe("the schema the migrations build", function()
  local d
  setup(function() d = fresh("shape") end)
  teardown(function() d.drop() end)

  it("matches schema.md's revision 1 table by table", function()
    migrate.upgrade(d.manager, REV1, { dir = MIGRATIONS })
    assert.same({ "audit_logs", "authority_ledger_events", "authority_policies", "caracal_migrations",
                  "execution_mandates", "ledger_events", "ledger_snapshots", "merkle_roots", "principals" },
                user_tables(d.manager))
    for tbl, e in pairs(REVISION_1) do
      assert.same(sorted(e), actual(d.manager, tbl), tbl)
    end
    for _, seq in ipairs({ { "ledger_events", "event_id" }, { "authority_ledger_events", "event_id" },
                           { "audit_logs", "log_id" } }) do
      assert.equal("public." .. seq[1] .. "_" .. seq[2] .. "_seq",
        d.manager:execute("select pg_get_serial_sequence($1::text, $2::text) as s", seq[1], seq[2])[1].s)
    end
    assert.equal(0, d.manager:execute("select count(*) as n from pg_trigger t join pg_class c on c.oid = t.tgrelid " ..
      "where not t.tgisinternal")[1].n)
  end)

  -- The triggers of the tables that are not partitions, as psql shows them.
  local function triggers_of(m)
    local out = {}
    for _, r in ipairs(m:execute([[select c.relname::text || ' ' || pg_get_triggerdef(t.oid) as t
        from pg_trigger t join pg_class c on c.oid = t.tgrelid where not t.tgisinternal and not c.relispartition
        order by 1]])) do
      out[#out + 1] = r.t
    end
    return out
  end
  local function revision2_triggers()
    local expected = {}
    for _, l in ipairs({ { "audit_logs", "" }, { "authority_ledger_events", "'merkle_root_id'" },
                         { "ledger_events", "'merkle_root_id'" } }) do
      expected[#expected + 1] = string.format("%s CREATE TRIGGER %s_append_only BEFORE DELETE OR UPDATE ON " ..
        "public.%s FOR EACH ROW EXECUTE FUNCTION caracal_ledger_append_only(%s)", l[1], l[1], l[1], l[2])
      expected[#expected + 1] = string.format("%s CREATE TRIGGER %s_no_truncate BEFORE TRUNCATE ON public.%s " ..
        "FOR EACH STATEMENT EXECUTE FUNCTION caracal_ledger_append_only()", l[1], l[1], l[1])
    end
    table.sort(expected)
    return expected
  end

  it("matches schema.md's hardening at revision 2, and revision 2's down restores revision 1", function()
    migrate.upgrade(d.manager, REV2, { dir = MIGRATIONS })
    for tbl in pairs(REVISION_1) do
      assert.same(sorted(head_expectation(tbl)), actual(d.manager, tbl), tbl)
    end
    assert.same(revision2_triggers(), triggers_of(d.manager))

    migrate.downgrade(d.manager, REV1, { dir = MIGRATIONS })
    for tbl, e in pairs(REVISION_1) do
      assert.same(sorted(e), actual(d.manager, tbl), tbl)
    end
    assert.equal(0, d.manager:execute("select count(*) as n from pg_proc where proname = 'caracal_ledger_append_only'")[1].n)
  end)

  it("at head (revision 3) partitions the two ledgers by month and keeps everything else of revision 2", function()
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    local ledgers = { ledger_events = true, authority_ledger_events = true }
    for tbl in pairs(REVISION_1) do
      local e = head_expectation(tbl)
      if ledgers[tbl] then
        -- The primary key holds the partition key; nothing else changes.
        for i, v in ipairs(e.indexes) do
          if v == tbl .. "_pkey UNIQUE (event_id)" then e.indexes[i] = tbl .. "_pkey UNIQUE (event_id, timestamp)" end
        end
        for i, v in ipairs(e.constraints) do
          if v == tbl .. "_pkey PRIMARY KEY (event_id)" then
            e.constraints[i] = tbl .. '_pkey PRIMARY KEY (event_id, "timestamp")'
          end
        end
        assert.equal("RANGE (\"timestamp\")",
          d.manager:execute("select pg_get_partkeydef($1::text::regclass) as k", tbl)[1].k)
      end
      assert.same(sorted(e), actual(d.manager, tbl), tbl)
    end
    assert.same(revision2_triggers(), triggers_of(d.manager))
    -- Every partition carries both guards (TRUNCATE triggers are not cloned by PostgreSQL).
    local missing = d.manager:execute([[select c.relname::text as p from pg_class c where c.relispartition
        and c.relkind = 'r' and (select count(*) from pg_trigger t where t.tgrelid = c.oid and not t.tgisinternal) <> 2]])
    assert.equal(0, #missing, missing[1] and missing[1].p)
    assert.is_true(d.manager:execute("select count(*) as n from pg_class where relispartition and relkind = 'r'")[1].n >= 10)

    migrate.downgrade(d.manager, REV2, { dir = MIGRATIONS })
    for tbl in pairs(REVISION_1) do
      assert.same(sorted(head_expectation(tbl)), actual(d.manager, tbl), tbl)
    end
    assert.same(revision2_triggers(), triggers_of(d.manager))
    assert.equal(0, d.manager:execute("select count(*) as n from pg_class where relispartition")[1].n)
  end)
end)

describe("revision 2's hardening at work", function()
  local d, m
  setup(function()
    d = fresh("hardening")
    m = d.manager
    migrate.upgrade(m, "head", { dir = MIGRATIONS })
  end)
  teardown(function() d.drop() end)

  local function fails(sql, ...)
    local ok, err = pcall(m.execute, m, sql, ...)
    assert(not ok, "expected failure: " .. sql)
    assert.is_true(core.is_error(err))
    return err
  end

  local agent
  local function principal(name)
    return m:execute("insert into principals (name, principal_type, owner) values ($1::text, 'agent', 'o') " ..
                     "returning principal_id", name)[1].principal_id
  end

  it("fills the client-side defaults on the server", function()
    agent = principal("agent-defaults")
    assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", agent) -- gen_random_uuid(): v4
    local p = m:execute("select created_at from principals where principal_id = $1::uuid", agent)[1]
    assert.is_true(core.is_instant(p.created_at))
    local e = m:execute("insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
      "values ($1::uuid, 'api', 1, 0) returning currency, \"timestamp\", event_id", agent)[1]
    assert.equal("USD", e.currency)
    assert.is_true(core.is_instant(e.timestamp))
    local mandate = m:execute([[insert into execution_mandates (issuer_id, subject_id, valid_from, valid_until,
        resource_scope, action_scope, signature) values ($1::uuid, $1::uuid, now(), now() + interval '1 day',
        '["*"]', '["*"]', 'ab') returning revoked, delegation_depth, mandate_id]], agent)[1]
    assert.is_false(mandate.revoked)
    assert.equal(0, mandate.delegation_depth)
    local pol = m:execute([[insert into authority_policies (principal_id, max_validity_seconds,
        allowed_resource_patterns, allowed_actions, created_by) values ($1::uuid, 60, '["*"]', '["read"]', 'me')
        returning allow_delegation, max_delegation_depth, active]], agent)[1]
    assert.same({ false, 0, true }, { pol.allow_delegation, pol.max_delegation_depth, pol.active })
    local root = m:execute([[insert into merkle_roots (batch_id, merkle_root, signature, event_count,
        first_event_id, last_event_id) values (gen_random_uuid(), 'aa', 'bb', 1, 1, 1) returning source, root_id]])[1]
    assert.equal("live", root.source)
  end)

  it("rejects rows that break the CHECK constraints", function()
    local a = principal("agent-checks")
    local cases = {
      { "ck_ledger_events_currency", "insert into ledger_events (agent_id, resource_type, quantity, cost, currency) " ..
        "values ($1::uuid, 'api', 1, 0, 'usd')" },
      { "ck_ledger_events_quantity", "insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
        "values ($1::uuid, 'api', -1, 0)" },
      { "ck_ledger_events_cost", "insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
        "values ($1::uuid, 'api', 1, -0.5)" },
      { "ck_authority_ledger_events_event_type", "insert into authority_ledger_events (event_type, principal_id) " ..
        "values ('approved', $1::uuid)" },
      { "ck_authority_ledger_events_decision", "insert into authority_ledger_events (event_type, principal_id, decision) " ..
        "values ('validated', $1::uuid, 'maybe')" },
      { "ck_execution_mandates_valid_range", "insert into execution_mandates (issuer_id, subject_id, valid_from, " ..
        "valid_until, resource_scope, action_scope, signature) values ($1::uuid, $1::uuid, now(), now(), '[]', '[]', 'x')" },
      { "ck_execution_mandates_resource_scope_array", "insert into execution_mandates (issuer_id, subject_id, " ..
        "valid_from, valid_until, resource_scope, action_scope, signature) values ($1::uuid, $1::uuid, now(), " ..
        "now() + interval '1 s', '\"*\"', '[]', 'x')" },
      { "ck_execution_mandates_delegation_depth", "insert into execution_mandates (issuer_id, subject_id, valid_from, " ..
        "valid_until, resource_scope, action_scope, signature, delegation_depth) values ($1::uuid, $1::uuid, now(), " ..
        "now() + interval '1 s', '[]', '[]', 'x', -1)" },
      { "ck_authority_policies_max_validity", "insert into authority_policies (principal_id, max_validity_seconds, " ..
        "allowed_resource_patterns, allowed_actions, created_by) values ($1::uuid, 0, '[]', '[]', 'me')" },
      { "ck_authority_policies_actions_array", "insert into authority_policies (principal_id, max_validity_seconds, " ..
        "allowed_resource_patterns, allowed_actions, created_by) values ($1::uuid, 5, '[]', '{}', 'me')" },
    }
    for _, c in ipairs(cases) do
      local err = fails(c[2], a)
      assert.equal("23514", err.sqlstate, c[1])
      assert.equal(c[1], err.constraint)
    end
    m:execute("insert into authority_ledger_events (event_type, principal_id, decision) values ('validated', $1::uuid, 'denied')", a)
  end)

  it("allows at most one active policy per principal", function()
    local a = principal("agent-policy")
    local ins = "insert into authority_policies (principal_id, max_validity_seconds, allowed_resource_patterns, " ..
      "allowed_actions, created_by, active) values ($1::uuid, 60, '[]', '[]', 'me', $2::boolean)"
    m:execute(ins, a, true)
    m:execute(ins, a, false)
    m:execute(ins, a, false)
    local err = fails(ins, a, true)
    assert.equal("23505", err.sqlstate)
    assert.equal("uq_authority_policies_one_active", err.constraint)
  end)

  describe("append-only ledgers", function()
    local a, root1, root2
    setup(function()
      a = principal("agent-ledger")
      local function root()
        return m:execute([[insert into merkle_roots (batch_id, merkle_root, signature, event_count, first_event_id,
          last_event_id) values (gen_random_uuid(), 'aa', 'bb', 2, 1, 2) returning root_id]])[1].root_id
      end
      root1, root2 = root(), root()
    end)

    it("rejects UPDATE, DELETE and TRUNCATE of ledger events with SQLSTATE CA001", function()
      local id = m:execute("insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
        "values ($1::uuid, 'api', 5, 0.25) returning event_id", a)[1].event_id
      local err = fails("update ledger_events set cost = 0 where event_id = $1::int8", id)
      assert.equal("CA001", err.sqlstate)
      assert.equal("ledger_events is append-only: UPDATE is not allowed (only setting merkle_root_id once)", err.message)
      assert.equal("an update may only set a NULL merkle_root_id and change nothing else", err.detail)
      assert.equal("ledger rows are never changed or removed; record a correcting event instead", err.hint)
      err = fails("delete from ledger_events where event_id = $1::int8", id)
      assert.equal("CA001", err.sqlstate)
      assert.equal("ledger_events is append-only: DELETE is not allowed", err.message)
      err = fails("truncate ledger_events")
      assert.equal("CA001", err.sqlstate)
      assert.equal("ledger_events is append-only: TRUNCATE is not allowed", err.message)
      assert.equal("0.250000", tostring(m:execute("select cost from ledger_events where event_id = $1::int8", id)[1].cost))
    end)

    it("allows the one batching update, setting a NULL merkle_root_id once", function()
      local ids = {}
      for i = 1, 2 do
        ids[i] = m:execute("insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
          "values ($1::uuid, 'api', $2::int, 1) returning event_id", a, i)[1].event_id
      end
      local _, n = m:execute("update ledger_events set merkle_root_id = $1::uuid where event_id = any(array[$2::int8, $3::int8])",
        root1, ids[1], ids[2])
      assert.equal(2, n)
      -- Once: moving to another root, clearing it, or changing more than it are rejected.
      local err = fails("update ledger_events set merkle_root_id = $1::uuid where event_id = $2::int8", root2, ids[1])
      assert.equal("CA001", err.sqlstate)
      assert.equal("merkle_root_id is already set", err.detail)
      fails("update ledger_events set merkle_root_id = null where event_id = $1::int8", ids[1])
      local id3 = m:execute("insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
        "values ($1::uuid, 'api', 3, 1) returning event_id", a)[1].event_id
      err = fails("update ledger_events set merkle_root_id = $1::uuid, quantity = 4 where event_id = $2::int8", root1, id3)
      assert.equal("an update may only set a NULL merkle_root_id and change nothing else", err.detail)
      -- Deleting a root would unbatch its events (ON DELETE SET NULL): refused too.
      err = fails("delete from merkle_roots where root_id = $1::uuid", root1)
      assert.equal("CA001", err.sqlstate)
      assert.equal(root1, m:execute("select merkle_root_id from ledger_events where event_id = $1::int8", ids[1])[1].merkle_root_id)
    end)

    it("guards authority_ledger_events the same way", function()
      local id = m:execute("insert into authority_ledger_events (event_type, principal_id, decision) " ..
        "values ('validated', $1::uuid, 'allowed') returning event_id", a)[1].event_id
      local err = fails("update authority_ledger_events set decision = 'denied' where event_id = $1::int8", id)
      assert.equal("authority_ledger_events is append-only: UPDATE is not allowed (only setting merkle_root_id once)",
        err.message)
      assert.equal("authority_ledger_events is append-only: DELETE is not allowed",
        fails("delete from authority_ledger_events").message)
      assert.equal("authority_ledger_events is append-only: TRUNCATE is not allowed",
        fails("truncate authority_ledger_events").message)
      local _, n = m:execute("update authority_ledger_events set merkle_root_id = $1::uuid where event_id = $2::int8", root2, id)
      assert.equal(1, n)
    end)

    it("rejects every UPDATE of audit_logs, including INSERT ... ON CONFLICT DO UPDATE", function()
      local ins = [[insert into audit_logs (event_id, event_type, topic, partition, "offset", event_timestamp,
        logged_at, event_data) values ('e1', 'x', 'topic', 0, 7, now(), now(), '{}')]]
      m:execute(ins)
      local err = fails("update audit_logs set event_type = 'y'")
      assert.equal("CA001", err.sqlstate)
      assert.equal("audit_logs is append-only: UPDATE is not allowed", err.message)
      assert.equal("audit_logs is append-only: DELETE is not allowed", fails("delete from audit_logs").message)
      assert.equal("audit_logs is append-only: TRUNCATE is not allowed", fails("truncate audit_logs").message)
      err = fails(ins .. [[ on conflict (topic, partition, "offset") do update set event_type = 'z']])
      assert.equal("CA001", err.sqlstate)
      assert.equal(1, m:execute("select count(*) as n from audit_logs")[1].n)
    end)
  end)

  it("converts timestamps as UTC both ways", function()
    local sd = fresh("tz")
    migrate.upgrade(sd.manager, REV1, { dir = MIGRATIONS })
    local a = sd.manager:execute("insert into principals values (gen_random_uuid(), 'p', 'agent', 'o', null, null, " ..
      "null, '2024-05-01 08:00:00.5', null) returning principal_id")[1].principal_id
    migrate.upgrade(sd.manager, "head", { dir = MIGRATIONS })
    sd.manager:session_scope(function(s)
      -- The naive 08:00:00.5 was UTC: the same instant as 10:00:00.5+02,
      -- whatever the session's time zone.
      s:execute("set local timezone = 'America/New_York'")
      assert.is_true(s:scalar("select created_at = '2024-05-01 10:00:00.5+02' from principals " ..
        "where principal_id = $1::uuid", a))
      s:execute("insert into principals (name, principal_type, owner, created_at) values ('q', 'agent', 'o', " ..
        "'2024-06-01 12:00:00+02')")
    end)
    migrate.downgrade(sd.manager, REV1, { dir = MIGRATIONS })
    local rows = sd.manager:execute("select name, created_at::text as t from principals order by name")
    assert.same({ "2024-05-01 08:00:00.5", "2024-06-01 10:00:00" }, { rows[1].t, rows[2].t })
    sd.drop()
  end)
end)
