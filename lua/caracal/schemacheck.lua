--- Compare the model declarations (`caracal.schema`) with a live
-- database's catalog, so drift between the code and the schema is found
-- at startup or by `caracal db check`, not by a failed insert.
--
--    local problems = require("caracal.schemacheck").check(session)
--    for _, p in ipairs(problems) do print(p.table, p.column, p.message) end
--
-- What is compared, per declared table: the table exists; every declared
-- column exists with the declared type (VARCHAR length, NUMERIC precision
-- and scale; a timestamp may be stored with or without time zone, as
-- revisions 1 and 2 differ there) and nullability; no extra column the
-- models do not know is NOT NULL without a default (inserts would fail).
-- @module caracal.schemacheck
local schema = require "caracal.schema"

local M = {}

-- information_schema's data_type for each declared type.
local DATA_TYPES = {
  uuid = { ["uuid"] = true },
  varchar = { ["character varying"] = true },
  integer = { ["integer"] = true },
  bigint = { ["bigint"] = true },
  boolean = { ["boolean"] = true },
  numeric = { ["numeric"] = true },
  timestamp = { ["timestamp without time zone"] = true, ["timestamp with time zone"] = true },
  jsonb = { ["jsonb"] = true },
}

local function declared_type(c)
  if c.type == "varchar" then return string.format("VARCHAR(%d)", c.length) end
  if c.type == "numeric" then return string.format("NUMERIC(%d,%d)", c.precision, c.scale) end
  return c.type:upper()
end

local function live_type(r)
  if r.data_type == "character varying" then
    return string.format("VARCHAR(%s)", tostring(r.character_maximum_length or ""))
  end
  if r.data_type == "numeric" then
    return string.format("NUMERIC(%s,%s)", tostring(r.numeric_precision or ""), tostring(r.numeric_scale or ""))
  end
  return r.data_type:upper()
end

--- Problems found; an empty list when the database matches the models.
-- @param session a Session on the database
-- @tparam[opt] string schema_name default "public"
-- @treturn table list of `{table, column, message}`
function M.check(session, schema_name)
  schema_name = schema_name or "public"
  local rows = session:execute([[
    SELECT table_name, column_name, data_type, character_maximum_length, numeric_precision,
           numeric_scale, is_nullable, column_default
      FROM information_schema.columns WHERE table_schema = $1
     ORDER BY table_name, ordinal_position]], schema_name)
  local live = {}
  for _, r in ipairs(rows) do
    live[r.table_name] = live[r.table_name] or {}
    live[r.table_name][r.column_name] = r
  end
  local problems = {}
  local function problem(t, c, fmt, ...)
    problems[#problems + 1] = { table = t, column = c, message = string.format(fmt, ...) }
  end
  for _, t in ipairs(schema.tables) do
    local cols = live[t.name]
    if not cols then
      problem(t.name, nil, "table %s (model %s) does not exist", t.name, t.model)
    else
      for _, c in ipairs(t.columns) do
        local r = cols[c.name]
        if not r then
          problem(t.name, c.name, "%s.%s is missing (model %s.%s)", t.name, c.name, t.model, c.attr)
        else
          local ok = DATA_TYPES[c.type][r.data_type]
          if ok and c.type == "varchar" then ok = r.character_maximum_length == c.length end
          if ok and c.type == "numeric" then
            ok = r.numeric_precision == c.precision and r.numeric_scale == c.scale
          end
          if not ok then
            problem(t.name, c.name, "%s.%s is %s in the database, %s in the model", t.name, c.name,
                    live_type(r), declared_type(c))
          end
          local nullable = r.is_nullable == "YES"
          if nullable ~= c.nullable then
            problem(t.name, c.name, "%s.%s is %s in the database, %s in the model", t.name, c.name,
                    nullable and "NULL" or "NOT NULL", c.nullable and "NULL" or "NOT NULL")
          end
        end
      end
      for name, r in pairs(cols) do
        if not t.by_column[name] and r.is_nullable == "NO" and r.column_default == nil then
          problem(t.name, name, "%s.%s is NOT NULL without a default and unknown to model %s: inserts will fail",
                  t.name, name, t.model)
        end
      end
    end
  end
  table.sort(problems, function(a, b)
    if a.table ~= b.table then return a.table < b.table end
    return (a.column or "") < (b.column or "")
  end)
  return problems
end

return M
