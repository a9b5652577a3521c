--- Least-privilege roles for a Caracal database.
--
-- The ledger's append-only triggers stop every role, except that a table's
-- owner can `ALTER TABLE ... DISABLE TRIGGER` and a superuser can `SET
-- session_replication_role = replica` (reliability.md L3). So the role
-- scripts connect with must be neither:
--
--    owner (NOLOGIN)  owns the tables, the sequences and the trigger
--                     function; nobody logs in as it
--    migrator (LOGIN) runs migrations as the owner: connect with
--                     options = "-c role=<owner>" (a member of owner)
--    app (LOGIN)      what scripts and services use: SELECT and INSERT on
--                     the ledgers, UPDATE of merkle_root_id only (batching),
--                     what the admin tasks need on the other tables, and
--                     nothing else: no UPDATE, DELETE or TRUNCATE of ledger
--                     rows, no ALTER TABLE, no CREATE in the schema, no
--                     session_replication_role
--
--    -- as a superuser (or the database owner), after `caracal db upgrade`
--    -- and again after every later migration (it is idempotent):
--    local roles = require "caracal.roles"
--    manager:session_scope(function(s)
--      roles.setup(s, { owner = "caracal_owner", app = "caracal_app", migrator = "caracal_migrator" })
--    end)
--    -- then, outside Caracal, so the password never travels in logged SQL:
--    --   psql -c '\password caracal_app'
--
-- `roles.sql(opts)` gives the same statements as text for psql (for a
-- schema at revision 2; partitions made later need `setup` run online).
-- `roles.check(session, app)` lists what is wrong with a role set-up
-- (empty when the app role cannot tamper with the ledgers).
-- @module caracal.roles
local schema = require "caracal.schema"
local sqltext = require "caracal.migrate.sqltext"

local M = {}

local q = sqltext.quote_ident

--- What the app role may do on each table (beyond SELECT). Ledgers:
-- INSERT, and UPDATE of the batching column only.
M.grants = {
  principals = { "INSERT", "UPDATE" },
  execution_mandates = { "INSERT", "UPDATE" },
  merkle_roots = { "INSERT" },
  ledger_events = { "INSERT", "UPDATE (merkle_root_id)" },
  authority_ledger_events = { "INSERT", "UPDATE (merkle_root_id)" },
  authority_policies = { "INSERT", "UPDATE" },
  ledger_snapshots = { "INSERT", "DELETE" },
  audit_logs = { "INSERT" },
  caracal_migrations = {},
}

--- The append-only tables and their guard triggers (migration 2).
M.ledgers = { "ledger_events", "authority_ledger_events", "audit_logs" }

local function check_name(what, v)
  if type(v) ~= "string" or v == "" or #v > 63 or v:find("\0", 1, true) or not utf8.len(v) then
    error(string.format("roles: %s must be a role name of 1 to 63 bytes, got %s", what, tostring(v)), 3)
  end
  return v
end

local function options(opts)
  opts = opts or {}
  local o = {
    owner = check_name("owner", opts.owner or "caracal_owner"),
    app = check_name("app", opts.app or "caracal_app"),
    migrator = opts.migrator and check_name("migrator", opts.migrator) or nil,
    schema = check_name("schema", opts.schema or "public"),
  }
  if o.owner == o.app or o.app == o.migrator then
    error("roles: the app role must be separate from the owner and the migrator", 3)
  end
  return o
end

local ROLE_ATTRS = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

--- The statements of a set-up.
-- @tparam table opts `owner`, `app`, `migrator`, `schema`
-- @tparam[opt] table present what exists: `roles` (name -> true),
-- `tables` (name -> true), `sequences` (list of {table, sequence}),
-- `triggers` (list of {table, trigger}), `database` (name); nil: assume
-- everything of the schema exists and the roles do not
-- @treturn {string,...}
function M.statements(opts, present)
  local o = options(opts)
  present = present or {}
  local roles = present.roles or {}
  local out = {}
  local function add(sql) out[#out + 1] = sql end
  if roles[o.owner] then add("ALTER ROLE " .. q(o.owner) .. " NOLOGIN " .. ROLE_ATTRS)
  else add("CREATE ROLE " .. q(o.owner) .. " NOLOGIN " .. ROLE_ATTRS) end
  if roles[o.app] then add("ALTER ROLE " .. q(o.app) .. " LOGIN NOINHERIT " .. ROLE_ATTRS)
  else add("CREATE ROLE " .. q(o.app) .. " LOGIN NOINHERIT " .. ROLE_ATTRS) end
  if o.migrator then
    if roles[o.migrator] then add("ALTER ROLE " .. q(o.migrator) .. " LOGIN INHERIT " .. ROLE_ATTRS)
    else add("CREATE ROLE " .. q(o.migrator) .. " LOGIN INHERIT " .. ROLE_ATTRS) end
    add("GRANT " .. q(o.owner) .. " TO " .. q(o.migrator))
  end
  if present.app_member_of_owner then add("REVOKE " .. q(o.owner) .. " FROM " .. q(o.app)) end
  local s = q(o.schema)
  if present.database then
    add("REVOKE CREATE ON DATABASE " .. q(present.database) .. " FROM PUBLIC")
    add("GRANT CONNECT ON DATABASE " .. q(present.database) .. " TO " .. q(o.app))
  end
  add("REVOKE CREATE ON SCHEMA " .. s .. " FROM PUBLIC")
  add("REVOKE CREATE ON SCHEMA " .. s .. " FROM " .. q(o.app))
  add("GRANT USAGE ON SCHEMA " .. s .. " TO " .. q(o.app))
  local names = {}
  for _, t in ipairs(schema.tables) do names[#names + 1] = t.name end
  names[#names + 1] = "caracal_migrations"
  for _, name in ipairs(names) do
    if present.tables == nil or present.tables[name] then
      local t = s .. "." .. q(name)
      add("ALTER TABLE " .. t .. " OWNER TO " .. q(o.owner))
      add("REVOKE ALL ON TABLE " .. t .. " FROM PUBLIC, " .. q(o.app))
      add("GRANT SELECT ON TABLE " .. t .. " TO " .. q(o.app))
      for _, g in ipairs(M.grants[name] or {}) do
        local priv, cols = g:match("^(%u+) %((.-)%)$")
        if priv then
          add("GRANT " .. priv .. " (" .. q(cols) .. ") ON TABLE " .. t .. " TO " .. q(o.app))
        else
          add("GRANT " .. g .. " ON TABLE " .. t .. " TO " .. q(o.app))
        end
      end
    end
  end
  -- Partitions of the ledgers (revision 3): owned by the owner too, and
  -- closed to everyone but through their ledger.
  for _, part in ipairs(present.partitions or {}) do
    local t = s .. "." .. q(part[2])
    add("ALTER TABLE " .. t .. " OWNER TO " .. q(o.owner))
    add("REVOKE ALL ON TABLE " .. t .. " FROM PUBLIC, " .. q(o.app))
  end
  for _, seq in ipairs(present.sequences or {}) do
    add("REVOKE ALL ON SEQUENCE " .. s .. "." .. q(seq[2]) .. " FROM PUBLIC")
    add("GRANT USAGE ON SEQUENCE " .. s .. "." .. q(seq[2]) .. " TO " .. q(o.app))
  end
  if present.guard_function ~= false then
    add("ALTER FUNCTION " .. s .. ".caracal_ledger_append_only() OWNER TO " .. q(o.owner))
  end
  if present.partition_function then
    add("ALTER FUNCTION " .. s .. ".caracal_ledger_partition(regclass, date) OWNER TO " .. q(o.owner))
    add("REVOKE EXECUTE ON FUNCTION " .. s .. ".caracal_ledger_partition(regclass, date) FROM PUBLIC, " .. q(o.app))
  end
  -- ENABLE ALWAYS: the guards fire even under session_replication_role =
  -- replica (a superuser's bypass; logical replication).
  for _, tr in ipairs(present.triggers or {}) do
    add("ALTER TABLE " .. s .. "." .. q(tr[1]) .. " ENABLE ALWAYS TRIGGER " .. q(tr[2]))
  end
  return out
end

-- What exists in the database, for `statements`.
local function inspect(session, o)
  local present = { roles = {}, tables = {}, sequences = {}, triggers = {} }
  for _, r in ipairs(session:execute("select rolname::text as name from pg_roles where rolname = any($1::text[])",
                                     { o.owner, o.app, o.migrator or o.owner })) do
    present.roles[r.name] = true
  end
  present.database = session:scalar("select current_database()::text")
  present.app_member_of_owner = session:scalar([[select exists (select 1 from pg_auth_members m
    join pg_roles r on r.oid = m.roleid join pg_roles u on u.oid = m.member
    where r.rolname = $1 and u.rolname = $2)]], o.owner, o.app)
  for _, r in ipairs(session:execute([[select c.relname::text as name from pg_class c
      join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relkind in ('r', 'p')]], o.schema)) do
    present.tables[r.name] = true
  end
  for _, r in ipairs(session:execute([[select t.relname::text as tbl, s.relname::text as seq from pg_depend d
      join pg_class s on s.oid = d.objid and s.relkind = 'S'
      join pg_class t on t.oid = d.refobjid
      join pg_namespace n on n.oid = t.relnamespace
      where d.deptype in ('a', 'i') and n.nspname = $1 order by 1, 2]], o.schema)) do
    present.sequences[#present.sequences + 1] = { r.tbl, r.seq }
  end
  local ledgers = {}
  for _, l in ipairs(M.ledgers) do ledgers[l] = true end
  present.partitions = {}
  for _, r in ipairs(session:execute([[select p.relname::text as parent, c.relname::text as child
      from pg_inherits i join pg_class c on c.oid = i.inhrelid join pg_class p on p.oid = i.inhparent
      join pg_namespace n on n.oid = p.relnamespace where n.nspname = $1 order by 1, 2]], o.schema)) do
    if ledgers[r.parent] then
      present.partitions[#present.partitions + 1] = { r.parent, r.child }
      ledgers[r.child] = true
    end
  end
  for _, r in ipairs(session:execute([[select c.relname::text as tbl, tg.tgname::text as trigger from pg_trigger tg
      join pg_class c on c.oid = tg.tgrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and not tg.tgisinternal order by 1, 2]], o.schema)) do
    if ledgers[r.tbl] then present.triggers[#present.triggers + 1] = { r.tbl, r.trigger } end
  end
  local function has_function(name)
    return session:scalar([[select exists (select 1 from pg_proc p
      join pg_namespace n on n.oid = p.pronamespace where n.nspname = $1 and p.proname = $2)]], o.schema, name)
  end
  present.guard_function = has_function("caracal_ledger_append_only")
  present.partition_function = has_function("caracal_ledger_partition")
  return present
end

--- Create or update the roles and privileges in the session's database
-- (run as a superuser, or a role that is a member of the owner role and
-- may create roles). Idempotent: run it again after each migration.
-- @tparam Session session
-- @tparam[opt] table opts `owner` ("caracal_owner"), `app`
-- ("caracal_app"), `migrator` (optional), `schema` ("public")
-- @treturn {string,...} the statements run
function M.setup(session, opts)
  local o = options(opts)
  local stmts = M.statements(o, inspect(session, o))
  for _, sql in ipairs(stmts) do session:execute_script(sql) end
  return stmts
end

--- The set-up as SQL text for psql (assumes the schema at head and the
-- roles new; `database` names the database for its grants).
-- @tparam[opt] table opts as `setup`, plus `database`
-- @treturn string
function M.sql(opts)
  opts = opts or {}
  local triggers, sequences = {}, {}
  for _, l in ipairs(M.ledgers) do
    triggers[#triggers + 1] = { l, l .. "_append_only" }
    triggers[#triggers + 1] = { l, l .. "_no_truncate" }
  end
  for _, t in ipairs(schema.tables) do
    for _, c in ipairs(t.columns) do
      if c.serial then sequences[#sequences + 1] = { t.name, t.name .. "_" .. c.name .. "_seq" } end
    end
  end
  local stmts = M.statements(opts, { database = opts.database, triggers = triggers, sequences = sequences })
  return table.concat(stmts, ";\n") .. ";\n"
end

--- What would let the app role change ledger rows, as a list of
-- problems (empty: none). Checks reliability.md L1/L3: the role is not the
-- owner of any Caracal table nor a member of a role that is, is not a
-- superuser, has no BYPASSRLS, CREATEROLE or CREATEDB, holds no UPDATE,
-- DELETE or TRUNCATE on a ledger or one of its partitions (beyond the
-- batching column), cannot create in the schema, and every guard trigger
-- is ENABLE ALWAYS.
-- @tparam Session session
-- @tparam string app the app role
-- @tparam[opt] string schema_name ("public")
-- @treturn {string,...}
function M.check(session, app, schema_name)
  schema_name = schema_name or "public"
  local problems = {}
  local function add(fmt, ...) problems[#problems + 1] = string.format(fmt, ...) end
  local r = session:first([[select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication
    from pg_roles where rolname = $1]], app)
  if not r then return { "role " .. app .. " does not exist" } end
  if r.rolsuper then add("%s is a superuser", app) end
  if r.rolbypassrls then add("%s has BYPASSRLS", app) end
  if r.rolcreaterole then add("%s has CREATEROLE", app) end
  if r.rolcreatedb then add("%s has CREATEDB", app) end
  if r.rolreplication then add("%s has REPLICATION", app) end
  local tables = {}
  for _, l in ipairs(M.ledgers) do
    tables[#tables + 1] = l
    for _, r in ipairs(session:execute([[select c.relname::text as child from pg_inherits i
        join pg_class c on c.oid = i.inhrelid join pg_class p on p.oid = i.inhparent
        join pg_namespace n on n.oid = p.relnamespace where n.nspname = $1 and p.relname = $2]], schema_name, l)) do
      tables[#tables + 1] = r.child
    end
  end
  for _, l in ipairs(tables) do
    local t = schema_name .. "." .. l
    local row = session:first([[select pg_has_role($1, c.relowner, 'USAGE') as owns,
        has_table_privilege($1, c.oid, 'DELETE') as del, has_table_privilege($1, c.oid, 'TRUNCATE') as trunc,
        has_table_privilege($1, c.oid, 'UPDATE') as upd
      from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $2 and c.relname = $3]],
      app, schema_name, l)
    if row then
      if row.owns then add("%s owns %s (or is a member of its owner): it can disable the triggers", app, t) end
      if row.del then add("%s may DELETE from %s", app, t) end
      if row.trunc then add("%s may TRUNCATE %s", app, t) end
      if row.upd then add("%s may UPDATE every column of %s", app, t) end
      for _, tr in ipairs(session:execute([[select tg.tgname::text as name, tg.tgenabled::text as enabled
          from pg_trigger tg join pg_class c on c.oid = tg.tgrelid join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1 and c.relname = $2 and not tg.tgisinternal]], schema_name, l)) do
        if tr.enabled ~= "A" then add("trigger %s on %s is not ENABLE ALWAYS (tgenabled %s)", tr.name, t, tr.enabled) end
      end
    end
  end
  if session:scalar("select has_schema_privilege($1, $2, 'CREATE')", app, schema_name) then
    add("%s may CREATE in schema %s (it could plant shadowing functions)", app, schema_name)
  end
  return problems
end

return M
