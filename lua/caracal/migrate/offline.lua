--- `--sql` mode: the SQL an upgrade or downgrade would run, made by
-- running the scripts against a recording `op`, with no connection at
-- all. Each transactional revision is BEGIN, its SET LOCAL timeouts, its
-- statements and its history row, COMMIT; a non-transactional one is
-- marked dirty, run, and cleared, as online.
-- @module caracal.migrate.offline
local core = require "caracal.core"
local scripts_mod = require "caracal.migrate.scripts"
local history = require "caracal.migrate.history"
local ops = require "caracal.migrate.ops"
local sqltext = require "caracal.migrate.sqltext"
local invoke = require "caracal.migrate.invoke"

local M = {}

local function raise(fields)
  error(core.Error(fields), 0)
end

local function label(s) return scripts_mod.label(s) end

-- End a statement with ";" for psql. After a trailing `-- comment` the
-- semicolon goes on its own line, or the comment would swallow it.
local function terminate(sql)
  sql = sql:gsub("%s+$", "")
  local _, in_comment = sqltext.statements(sql, 0)
  if in_comment then return sql .. "\n;" end
  if sql:sub(-1) == ";" then return sql end
  return sql .. ";"
end

-- Parse FROM:TO or TO into positions for offline runs.
local function offline_range(scripts, direction, target)
  if type(target) ~= "string" or target == "" then
    raise { kind = "usage", message = "a target is needed: head, base, a revision id or prefix, or FROM:TO" }
  end
  local a, b = target:match("^([^:]*):([^:]*)$")
  local function pos(t)
    if t:match("^[+-]%d+$") then
      raise { kind = "usage", message = "relative targets (" .. t .. ") need a database; with --sql give FROM:TO" }
    end
    return scripts:resolve(t)
  end
  if direction == "upgrade" then
    local from = (a and a ~= "") and pos(a) or 0
    local to = pos(b or target)
    if to < from then
      raise { kind = "usage", message = "upgrade range " .. target .. " goes down; use downgrade" }
    end
    return from, to
  end
  if not a or a == "" or b == "" then
    raise { kind = "usage", message = "downgrade with --sql needs a range FROM:TO, such as head:base " ..
      "(there is no database to read the current revision from)" }
  end
  local from, to = pos(a), pos(b)
  if to > from then raise { kind = "usage", message = "downgrade range " .. target .. " goes up; use upgrade" } end
  return from, to
end

--- The SQL an upgrade or downgrade would run, without touching any
-- database (Alembic's `--sql`): BEGIN ... COMMIT per revision, with the
-- history table's DDL and rows, ready for `psql -v ON_ERROR_STOP=1 -f`.
-- @tparam Scripts scripts
-- @tparam string direction "upgrade" or "downgrade"
-- @tparam string target a target, or FROM:TO (required for downgrade)
-- @tparam table opts validated options; `destructive` is needed to emit a
-- downgrade through a revision that drops tables
-- @treturn string
function M.sql(scripts, direction, target, opts)
  local from, to = offline_range(scripts, direction, target)
  local out = { string.format("-- caracal db %s %s --sql (migrations: %s)", direction, target, scripts.label_dir),
                "-- Apply with: psql -v ON_ERROR_STOP=1 -f FILE", "" }
  local function add(s) out[#out + 1] = s end
  if direction == "downgrade" and not opts.destructive then
    for i = from, to + 1, -1 do
      local s = scripts:at(i)
      if #s.destructive_down > 0 then
        raise { kind = "destructive", message = string.format("downgrading through %s drops tables %s " ..
          "with whatever rows they hold; pass --destructive to emit it", label(s),
          table.concat(s.destructive_down, ", ")) }
      end
    end
  end
  if direction == "upgrade" then
    add("BEGIN;")
    add(terminate(history.DDL))
    add("COMMIT;")
    add("")
  end
  local by = "caracal db --sql by " .. history.client()
  local first, last, step = from + 1, to, 1
  if direction == "downgrade" then first, last, step = from, to + 1, -1 end
  for i = first, last, step do
    local s = scripts:at(i)
    local up = direction == "upgrade"
    local stmts = {}
    local op = ops.new {
      run = function(sql)
        stmts[#stmts + 1] = terminate(sql)
        return { columns = {} }
      end,
      quote = sqltext.quote_ident, transactional = s.transaction, offline = true,
    }
    local ok, failure = invoke.run(s, up and "up" or "down", op)
    if not ok then raise(failure) end
    -- A comment line: control characters in the message must not end it.
    local message = s.message:gsub("%c", " ")
    if up then
      add(string.format("-- Running upgrade %s -> %s: %s (%s)", s.down_revision or "base", s.revision, message, s.file))
    else
      add(string.format("-- Running downgrade %s -> %s: %s (%s)", s.revision, s.down_revision or "base", message, s.file))
    end
    if s.transaction then
      add("BEGIN;")
      for _, t in ipairs(invoke.timeouts_sql(s, opts, true)) do add(t .. ";") end
      for _, t in ipairs(stmts) do add(t) end
      add(terminate(up and history.insert_sql(s, by) or history.delete_sql(s.revision)))
      add("COMMIT;")
    else
      add("-- This revision runs outside a transaction; it is marked dirty until it completes.")
      add(up and terminate(history.insert_sql(s, by, true))
             or ("UPDATE caracal_migrations SET dirty = true WHERE revision = " .. sqltext.literal(s.revision) .. ";"))
      for _, t in ipairs(invoke.timeouts_sql(s, opts, false)) do add(t .. ";") end
      for _, t in ipairs(stmts) do add(t) end
      add("RESET lock_timeout;")
      add("RESET statement_timeout;")
      add(up and ("UPDATE caracal_migrations SET dirty = false WHERE revision = " .. sqltext.literal(s.revision) .. ";")
             or terminate(history.delete_sql(s.revision)))
    end
    add("")
  end
  return table.concat(out, "\n")
end

return M
