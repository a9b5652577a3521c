--- What admin tasks share: the context the CLI hands them, output as
-- human text or `--json`, principal lookup by name or id, and usage errors.
--
-- A task is a module with `usage` (its help text) and `main(argv, ctx)`
-- returning an exit code. `ctx.manager()` gives the connection manager
-- (made on first call), `ctx.isatty(which)` tells whether "stdin",
-- "stdout" or "stderr" is a terminal, `ctx.confirm(question)` asks on a
-- terminal (and is false elsewhere unless `--yes` was given).
-- Copy a task from lua/caracal/tasks/ to start your own; run it with
-- `caracal run mytask.lua -- ARGS`.
-- @module caracal.task
local core = require "caracal.core"
local format = require "caracal.format"

local M = {}

--- Print a usage error and the command's usage line; returns 2.
function M.usage_error(usage, msg)
  io.stderr:write("caracal: ", msg, "\n", (usage:match("^[^\n]*") or ""), "\n")
  return 2
end

--- Print a failure as one block; returns 1.
function M.failure(err)
  io.stderr:write(tostring(err), "\n")
  return 1
end

--- A table for JSON output: Decimals and Instants become their text,
-- model objects plain tables, secrets dropped.
function M.plain(v, depth)
  depth = depth or 0
  if depth > 20 then return "..." end
  if type(v) ~= "table" then
    if core.is_decimal(v) or core.is_instant(v) then return tostring(v) end
    return v
  end
  local mt = getmetatable(v)
  if mt and mt.__name == "caracal.Error" then return tostring(v) end
  local out = core.is_json_array(v) and core.json_array() or {}
  for k, x in pairs(v) do
    if k ~= "private_key_pem" and k ~= "columns" then out[k] = M.plain(x, depth + 1) end
  end
  return out
end

--- Write data as JSON (`--json`) or through a function printing text.
function M.emit(opts, data, human)
  if opts.json then
    io.write(core.json_encode(M.plain(data)), "\n")
  else
    human(data)
  end
end

--- Print objects or rows as an aligned table with the given columns.
function M.print_table(list, columns)
  local rows = { columns = columns }
  for i, obj in ipairs(list) do
    local r = {}
    for _, c in ipairs(columns) do r[c] = obj[c] end
    rows[i] = r
  end
  io.write(format.rows(rows), "\n")
end

--- A principal by name or by id, or nil.
function M.find_principal(session, key)
  if core.is_uuid(key) then
    local p = session:get("Principal", core.uuid(key))
    if p then return p end
  end
  return session:query("Principal", { name = key })[1]
end

--- Like find_principal, but raises "unknown principal 'x'".
function M.need_principal(session, key)
  local p = M.find_principal(session, key)
  if not p then
    error(core.Error { kind = "not_found", message = string.format("unknown principal '%s'", tostring(key)) }, 0)
  end
  return p
end

--- Parse a JSON option value (`--metadata '{"k": 1}'`), or raise a usage error.
function M.json_option(name, text)
  if text == nil then return nil end
  local ok, v = pcall(core.json_decode, text)
  if not ok then error({ usage = string.format("--%s: %s", name, tostring(v):gsub("^.-: ", "")) }, 0) end
  return v
end

--- A comma-separated list option (`--actions read,write`) as an array.
function M.list_option(text)
  local out = core.json_array()
  if text == nil or text == "" then return out end
  for item in (text .. ","):gmatch("([^,]*),") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

--- A task's whole command line: parse argv against `spec` (see
-- caracal.args), print `usage` for --help (exit 0) or no command (exit 2),
-- and run `handlers[command](ctx, opts, words)` through `M.run`.
-- @treturn integer the exit code
function M.dispatch(argv, ctx, usage, spec, handlers)
  local opts, words = require("caracal.args").parse(argv, spec)
  if not opts then return M.usage_error(usage, words) end
  local sub = words[1]
  if opts.help or not sub then
    io.write(usage)
    return opts.help and 0 or 2
  end
  local handler = handlers[sub]
  if not handler then return M.usage_error(usage, "unknown command '" .. sub .. "'") end
  return M.run(usage, function() return handler(ctx, opts, words) end)
end

--- Run a task body, turning raised errors into exit codes: a `{usage=}`
-- table is a usage error (2), anything else a failure (1).
function M.run(usage, fn)
  local ok, res = pcall(fn)
  if ok then return res or 0 end
  if type(res) == "table" and not getmetatable(res) and res.usage then
    return M.usage_error(usage, res.usage)
  end
  return M.failure(res)
end

return M
