--- The template `caracal db revision -m MESSAGE` writes a new migration
-- from. `render(fields)` fills it; values are written as Lua literals
-- (`%q`), so a message cannot break the generated file.
-- @module caracal.migrate.template
local M = {}

M.text = [==[
--- ${message_comment}
-- Revision ${revision}, revises ${down_revision_comment}. Created ${date}.
--
-- `up(op)` applies the change and `down(op)` undoes it exactly. The
-- revision runs in one transaction; for statements that cannot (CREATE
-- INDEX CONCURRENTLY), add `transaction = false`. If `down` drops tables
-- that can hold data, list them in `destructive_down = {...}`: a downgrade
-- then refuses to drop rows without --destructive.
-- op: create_table, drop_table, rename_table, add_column, drop_column,
-- alter_column, create_index, drop_index, create_foreign_key,
-- create_check_constraint, create_unique_constraint, drop_constraint,
-- execute(sql), ident(name), literal(value).
return {
  revision = ${revision_lua},
  down_revision = ${down_revision_lua},
  message = ${message_lua},

  up = function(op)
  end,

  down = function(op)
  end,
}
]==]

--- The text of a new migration.
-- @tparam table f `revision`, `down_revision` (nil for the first), `message`, `date`
-- @treturn string
function M.render(f)
  local values = {
    revision = f.revision,
    revision_lua = string.format("%q", f.revision),
    down_revision_comment = f.down_revision or "nothing (the first revision)",
    down_revision_lua = f.down_revision and string.format("%q", f.down_revision) or "nil",
    message_comment = (f.message:gsub("%c", " ")),
    message_lua = string.format("%q", f.message),
    date = f.date or "",
  }
  return (M.text:gsub("%${([%w_]+)}", function(k) return values[k] end))
end

return M
