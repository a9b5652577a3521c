--- The `op` object a migration's `up(op)` and `down(op)` receive: DDL
-- operations that build SQL with every identifier quoted, and `execute`
-- for anything else.
--
--    op.create_table("principals", {
--      { "principal_id", "UUID", primary_key = true },
--      { "name", "VARCHAR(255)" },                      -- NOT NULL unless nullable = true
--      { "parent_principal_id", "UUID", nullable = true, references = "principals.principal_id" },
--    })
--    op.create_index("ix_principals_name", "principals", "name", { unique = true })
--    op.execute("create function ...")
--
-- The same object serves online runs (statements go to the database as
-- they are made, identifiers quoted by libpq) and `--sql` runs (statements
-- are recorded, identifiers quoted in Lua the same way). What is written
-- as SQL text (`default`, `where`, `using`, CHECK conditions, `execute`) is
-- taken as the migration's author wrote it; identifiers and types are the
-- parts that are checked and quoted.
-- @module caracal.migrate.ops
local sqltext = require "caracal.migrate.sqltext"

local M = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local REF_ACTIONS = { ["CASCADE"] = true, ["SET NULL"] = true, ["SET DEFAULT"] = true,
                      ["RESTRICT"] = true, ["NO ACTION"] = true }

local function ref_action(what, v)
  if v == nil then return "" end
  local up = type(v) == "string" and v:upper():gsub("%s+", " ") or nil
  if not up or not REF_ACTIONS[up] then
    fail("%s must be one of CASCADE, SET NULL, SET DEFAULT, RESTRICT, NO ACTION, got %s", what, tostring(v))
  end
  return " " .. what:upper():gsub("_", " ") .. " " .. up
end

-- Unknown keys are errors, so a typo (`nullabel = true`) cannot pass
-- silently and change the schema.
local function check_keys(what, t, allowed)
  for k in pairs(t) do
    if not allowed[k] then fail("%s: unknown option '%s'", what, tostring(k)) end
  end
end

local function list(v, what)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" or #v == 0 then fail("%s must be a name or a non-empty list of names", what) end
  return v
end

local COLUMN_KEYS = { [1] = true, [2] = true, name = true, type = true, nullable = true,
  default = true, server_default = true, primary_key = true, unique = true, references = true,
  on_delete = true, on_update = true }

--- Make an op object over a backend.
-- @tparam table backend `run(sql)` executes (or records) one piece of SQL
-- text and returns rows; `quote(name)` quotes an identifier;
-- `transactional` (the revision runs in a transaction); `offline` (`--sql`).
-- @treturn table op
function M.new(backend)
  local op = { offline = backend.offline or false }
  local q = backend.quote

  local function qlist(names, what)
    local out = {}
    for i, n in ipairs(list(names, what)) do out[i] = q(n) end
    return table.concat(out, ", ")
  end

  local function emit(sql)
    local words, line = sqltext.transaction_control(sql)
    if words then
      fail("migrations must not control transactions themselves (found '%s' on line %d of the SQL): " ..
           "the runner opens and commits one per revision; declare `transaction = false` to run " ..
           "statements outside a transaction", words, line)
    end
    if backend.transactional then
      local stmt = sqltext.needs_autocommit(sql)
      if stmt then
        fail("'%s' cannot run inside a transaction: declare `transaction = false` in this " ..
             "revision (it then runs statement by statement, marked dirty until it completes)", stmt)
      end
    end
    return backend.run(sql)
  end

  -- "table.column" or {table, column} -> quoted table, quoted column.
  local function reference(ref)
    local t, c
    if type(ref) == "table" then t, c = ref[1], ref[2]
    elseif type(ref) == "string" then t, c = ref:match("^(.+)%.([^.]+)$") end
    if not t or not c then fail("references must be \"table.column\" or {table, column}, got %s", tostring(ref)) end
    return q(t), q(c)
  end

  -- One column's definition (inline constraints only for add_column).
  local function column_sql(col, inline)
    if type(col) ~= "table" then fail("a column must be a table {name, type, ...}, got %s", type(col)) end
    check_keys("column", col, COLUMN_KEYS)
    local name = col.name or col[1]
    local ctype = sqltext.check_type(col.type or col[2])
    local parts = { q(name), ctype }
    local default = col.default
    if default == nil then default = col.server_default end
    if col.nullable ~= nil and type(col.nullable) ~= "boolean" then
      fail("column %s: nullable must be true or false", name)
    end
    if not col.nullable and not col.primary_key then parts[#parts + 1] = "NOT NULL" end
    if col.primary_key and not inline then parts[#parts + 1] = "NOT NULL" end
    if default ~= nil then
      if type(default) ~= "string" then fail("column %s: default must be SQL text, got %s", name, type(default)) end
      parts[#parts + 1] = "DEFAULT " .. default
    end
    if inline then
      if col.primary_key then parts[#parts + 1] = "PRIMARY KEY" end
      if col.unique then parts[#parts + 1] = "UNIQUE" end
      if col.references then
        local rt, rc = reference(col.references)
        parts[#parts + 1] = "REFERENCES " .. rt .. " (" .. rc .. ")" ..
          ref_action("on_delete", col.on_delete) .. ref_action("on_update", col.on_update)
      end
    end
    return table.concat(parts, " "), name
  end

  local function named(name)
    if name == nil then return "" end
    return "CONSTRAINT " .. q(name) .. " "
  end

  local function fk_sql(fk)
    check_keys("foreign key", fk, { name = true, columns = true, ref_table = true, ref_columns = true,
      on_delete = true, on_update = true, deferrable = true, initially_deferred = true, not_valid = true })
    local s = named(fk.name) .. "FOREIGN KEY (" .. qlist(fk.columns, "foreign key columns") ..
      ") REFERENCES " .. q(fk.ref_table) .. " (" .. qlist(fk.ref_columns, "referenced columns") .. ")" ..
      ref_action("on_delete", fk.on_delete) .. ref_action("on_update", fk.on_update)
    if fk.deferrable then s = s .. " DEFERRABLE" end
    if fk.initially_deferred then s = s .. " INITIALLY DEFERRED" end
    return s
  end

  --- CREATE TABLE. `columns` is a list of column specs `{name, type,
  -- nullable = false, default = "sql", primary_key = true, unique = true,
  -- references = "table.column", on_delete = "SET NULL"}`; columns are NOT
  -- NULL unless `nullable = true`. `opts`: `primary_key` (columns of a
  -- composite key), `unique` (a list of column lists, or `{name=, columns=}`),
  -- `foreign_keys` (a list of `{columns, ref_table, ref_columns, name,
  -- on_delete, on_update}`), `checks` (a list of `{name=, condition=}`).
  -- Constraints left unnamed get PostgreSQL's names (`<table>_pkey`,
  -- `<table>_<column>_fkey`, `<table>_<column>_key`).
  function op.create_table(name, columns, opts)
    opts = opts or {}
    check_keys("create_table", opts, { primary_key = true, unique = true, foreign_keys = true, checks = true })
    if type(columns) ~= "table" or #columns == 0 then fail("create_table %s: columns must be a non-empty list", tostring(name)) end
    local lines, pk, uniques, fks = {}, {}, {}, {}
    for _, col in ipairs(columns) do
      local def, cname = column_sql(col, false)
      lines[#lines + 1] = def
      if col.primary_key then pk[#pk + 1] = cname end
      if col.unique then uniques[#uniques + 1] = { columns = { cname } } end
      if col.references then
        local rt, rc
        if type(col.references) == "table" then rt, rc = col.references[1], col.references[2]
        else rt, rc = tostring(col.references):match("^(.+)%.([^.]+)$") end
        if not rt then reference(col.references) end -- raises the usage message
        fks[#fks + 1] = { columns = { cname }, ref_table = rt, ref_columns = { rc },
                          on_delete = col.on_delete, on_update = col.on_update }
      end
    end
    if opts.primary_key then
      if #pk > 0 then fail("create_table %s: primary key given both on columns and in opts", name) end
      pk = list(opts.primary_key, "primary_key")
    end
    if #pk > 0 then lines[#lines + 1] = "PRIMARY KEY (" .. qlist(pk) .. ")" end
    for _, u in ipairs(opts.unique or {}) do
      if u.columns then uniques[#uniques + 1] = u else uniques[#uniques + 1] = { columns = u } end
    end
    for _, u in ipairs(uniques) do
      lines[#lines + 1] = named(u.name) .. "UNIQUE (" .. qlist(u.columns, "unique columns") .. ")"
    end
    for _, fk in ipairs(opts.foreign_keys or {}) do fks[#fks + 1] = fk end
    for _, fk in ipairs(fks) do lines[#lines + 1] = fk_sql(fk) end
    for _, ck in ipairs(opts.checks or {}) do
      if type(ck.condition) ~= "string" then fail("create_table %s: a check needs condition = \"sql\"", name) end
      lines[#lines + 1] = named(ck.name) .. "CHECK (" .. ck.condition .. ")"
    end
    return emit("CREATE TABLE " .. q(name) .. " (\n    " .. table.concat(lines, ",\n    ") .. "\n)")
  end

  --- DROP TABLE. `opts`: `if_exists`, `cascade`.
  function op.drop_table(name, opts)
    opts = opts or {}
    check_keys("drop_table", opts, { if_exists = true, cascade = true })
    return emit("DROP TABLE " .. (opts.if_exists and "IF EXISTS " or "") .. q(name) ..
                (opts.cascade and " CASCADE" or ""))
  end

  --- RENAME a table.
  function op.rename_table(old, new)
    return emit("ALTER TABLE " .. q(old) .. " RENAME TO " .. q(new))
  end

  --- ADD COLUMN with a column spec as in `create_table` (constraints inline).
  function op.add_column(tbl, col)
    local def = column_sql(col, true)
    return emit("ALTER TABLE " .. q(tbl) .. " ADD COLUMN " .. def)
  end

  --- DROP COLUMN. `opts`: `if_exists`, `cascade`.
  function op.drop_column(tbl, column, opts)
    opts = opts or {}
    check_keys("drop_column", opts, { if_exists = true, cascade = true })
    return emit("ALTER TABLE " .. q(tbl) .. " DROP COLUMN " .. (opts.if_exists and "IF EXISTS " or "") ..
                q(column) .. (opts.cascade and " CASCADE" or ""))
  end

  --- ALTER COLUMN: `changes` may give `type` (with `using`, SQL text),
  -- `nullable` (true/false), `default` (SQL text; `false` drops it;
  -- `server_default` is the same, Alembic's name) and `new_name`. The
  -- changes go out as one ALTER TABLE, so the table is rewritten at most
  -- once.
  function op.alter_column(tbl, column, changes)
    check_keys("alter_column", changes or {}, { type = true, using = true, nullable = true, default = true,
      server_default = true, new_name = true })
    changes = changes or {}
    local col = q(column)
    local sub = {}
    if changes.type then
      local s = "ALTER COLUMN " .. col .. " TYPE " .. sqltext.check_type(changes.type)
      if changes.using then s = s .. " USING " .. changes.using end
      sub[#sub + 1] = s
    elseif changes.using then
      fail("alter_column %s.%s: using needs type", tbl, column)
    end
    local default = changes.default
    if default == nil then default = changes.server_default end
    if default == false then
      sub[#sub + 1] = "ALTER COLUMN " .. col .. " DROP DEFAULT"
    elseif default ~= nil then
      if type(default) ~= "string" then fail("alter_column %s.%s: default must be SQL text or false", tbl, column) end
      sub[#sub + 1] = "ALTER COLUMN " .. col .. " SET DEFAULT " .. default
    end
    if changes.nullable == true then
      sub[#sub + 1] = "ALTER COLUMN " .. col .. " DROP NOT NULL"
    elseif changes.nullable == false then
      sub[#sub + 1] = "ALTER COLUMN " .. col .. " SET NOT NULL"
    end
    local res
    if #sub > 0 then res = emit("ALTER TABLE " .. q(tbl) .. " " .. table.concat(sub, ", ")) end
    if changes.new_name then
      res = emit("ALTER TABLE " .. q(tbl) .. " RENAME COLUMN " .. col .. " TO " .. q(changes.new_name))
    end
    if not res then fail("alter_column %s.%s: nothing to change", tbl, column) end
    return res
  end

  --- CREATE INDEX. `columns`: a name or a list of names (or
  -- `{expression = "lower(name)"}` entries). `opts`: `unique`, `where` (SQL
  -- text: a partial index), `using` (an index method), `concurrently`
  -- (the revision must declare `transaction = false`), `if_not_exists`.
  function op.create_index(name, tbl, columns, opts)
    opts = opts or {}
    check_keys("create_index", opts, { unique = true, where = true, using = true, concurrently = true,
      if_not_exists = true })
    local cols = {}
    for i, c in ipairs(list(columns, "index columns")) do
      if type(c) == "table" and c.expression then cols[i] = "(" .. c.expression .. ")" else cols[i] = q(c) end
    end
    local s = "CREATE " .. (opts.unique and "UNIQUE " or "") .. "INDEX " ..
      (opts.concurrently and "CONCURRENTLY " or "") .. (opts.if_not_exists and "IF NOT EXISTS " or "") ..
      q(name) .. " ON " .. q(tbl)
    if opts.using then
      if type(opts.using) ~= "string" or not opts.using:match("^[%a_][%w_]*$") then
        fail("create_index %s: using must be an index method name", name)
      end
      s = s .. " USING " .. opts.using
    end
    s = s .. " (" .. table.concat(cols, ", ") .. ")"
    if opts.where then s = s .. " WHERE " .. opts.where end
    return emit(s)
  end

  --- DROP INDEX. `opts`: `if_exists`, `concurrently`.
  function op.drop_index(name, opts)
    opts = opts or {}
    check_keys("drop_index", opts, { if_exists = true, concurrently = true })
    return emit("DROP INDEX " .. (opts.concurrently and "CONCURRENTLY " or "") ..
                (opts.if_exists and "IF EXISTS " or "") .. q(name))
  end

  --- ADD a FOREIGN KEY constraint. `opts`: `on_delete`, `on_update`,
  -- `deferrable`, `initially_deferred`, `not_valid`.
  function op.create_foreign_key(name, tbl, cols, ref_table, ref_cols, opts)
    opts = opts or {}
    local fk = { name = name, columns = cols, ref_table = ref_table, ref_columns = ref_cols }
    for k, v in pairs(opts) do fk[k] = v end
    local s = "ALTER TABLE " .. q(tbl) .. " ADD " .. fk_sql(fk)
    if opts.not_valid then s = s .. " NOT VALID" end
    return emit(s)
  end

  --- ADD a CHECK constraint; `condition` is SQL text. `opts`: `not_valid`.
  function op.create_check_constraint(name, tbl, condition, opts)
    opts = opts or {}
    check_keys("create_check_constraint", opts, { not_valid = true })
    if type(condition) ~= "string" then fail("create_check_constraint %s: condition must be SQL text", tostring(name)) end
    return emit("ALTER TABLE " .. q(tbl) .. " ADD CONSTRAINT " .. q(name) .. " CHECK (" .. condition .. ")" ..
                (opts.not_valid and " NOT VALID" or ""))
  end

  --- ADD a UNIQUE constraint.
  function op.create_unique_constraint(name, tbl, cols)
    return emit("ALTER TABLE " .. q(tbl) .. " ADD CONSTRAINT " .. q(name) .. " UNIQUE (" ..
                qlist(cols, "unique columns") .. ")")
  end

  --- DROP CONSTRAINT. `opts`: `if_exists`, `cascade`.
  function op.drop_constraint(name, tbl, opts)
    opts = opts or {}
    check_keys("drop_constraint", opts, { if_exists = true, cascade = true })
    return emit("ALTER TABLE " .. q(tbl) .. " DROP CONSTRAINT " .. (opts.if_exists and "IF EXISTS " or "") ..
                q(name) .. (opts.cascade and " CASCADE" or ""))
  end

  --- Run SQL text as written (one or more statements, no parameters):
  -- functions, triggers, data changes. Returns the rows of the last
  -- statement (an empty list in `--sql` mode). Transaction control
  -- (BEGIN, COMMIT, ...) is refused: the runner owns the transaction.
  function op.execute(sql)
    if type(sql) ~= "string" then fail("execute: SQL must be a string, got %s", type(sql)) end
    return emit(sql)
  end

  --- An identifier quoted for SQL text given to `execute`.
  function op.ident(name) return q(name) end

  --- A value written as a SQL literal, for SQL text given to `execute`.
  op.literal = sqltext.literal

  return op
end

return M
