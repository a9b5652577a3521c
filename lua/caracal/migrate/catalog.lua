--- Schema snapshots from catalog queries (no pg_dump, so no version
-- matching): every column, constraint, index, trigger, function and
-- sequence of the current schema as one sorted list of lines. Two
-- snapshots are equal exactly when the schemas are; the migration history
-- and alembic_version tables are left out (bookkeeping, not schema).
-- @module caracal.migrate.catalog
local M = {}

local EXCLUDED = "('caracal_migrations', 'alembic_version')"

M.QUERIES = {
  -- Columns by position among live columns (attnum has gaps after DROP COLUMN).
  [[select format('column %s.%s #%s %s%s%s', c.relname, a.attname,
      row_number() over (partition by c.oid order by a.attnum),
      format_type(a.atttypid, a.atttypmod), case when a.attnotnull then ' NOT NULL' else '' end,
      coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')) as line
    from pg_attribute a
    join pg_class c on c.oid = a.attrelid
    join pg_namespace n on n.oid = c.relnamespace
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where n.nspname = current_schema() and c.relkind in ('r', 'p') and a.attnum > 0
      and not a.attisdropped and c.relname not in ]] .. EXCLUDED,
  [[select format('constraint %s.%s %s', c.relname, con.conname, pg_get_constraintdef(con.oid)) as line
    from pg_constraint con
    join pg_class c on c.oid = con.conrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = current_schema() and c.relname not in ]] .. EXCLUDED,
  [[select format('index %s %s', indexname, indexdef) as line from pg_indexes
    where schemaname = current_schema() and tablename not in ]] .. EXCLUDED,
  [[select format('trigger %s.%s %s', c.relname, t.tgname, pg_get_triggerdef(t.oid)) as line
    from pg_trigger t
    join pg_class c on c.oid = t.tgrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = current_schema() and not t.tgisinternal]],
  [[select format('function %s(%s) %s', p.proname, pg_get_function_identity_arguments(p.oid),
      pg_get_functiondef(p.oid)) as line
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = current_schema() and p.prokind in ('f', 'p')]],
  [[select format('sequence %s %s start %s increment %s', sequencename, data_type, start_value,
      increment_by) as line
    from pg_sequences where schemaname = current_schema()
      and sequencename not like 'caracal_migrations%']],
}

--- The snapshot of the manager's database.
-- @tparam ConnectionManager manager
-- @treturn table sorted lines
function M.snapshot(manager)
  local lines = {}
  manager:session_scope(function(s)
    for _, q in ipairs(M.QUERIES) do
      for _, r in ipairs(s:execute(q)) do lines[#lines + 1] = r.line end
    end
  end, { readonly = true })
  table.sort(lines)
  return lines
end

return M
