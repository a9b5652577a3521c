--- `caracal ledger record|list|spending|import`: the spending ledger.
-- @module caracal.tasks.ledger
local core = require "caracal.core"
local models = require "caracal.models"
local progress = require "caracal.progress"
local spending = require "caracal.spending"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal ledger record AGENT --resource TYPE --quantity Q --cost C
                             [--currency USD] [--at ISO-TIME] [--metadata JSON]
       caracal ledger list [AGENT] [--since ISO] [--until ISO] [--limit N] [--json]
       caracal ledger spending [--agent AGENT] [--since ISO] [--until ISO] [--json]
       caracal ledger import FILE [--batch N]

record    appends one event (quantities and costs are exact decimals:
          write them as text, e.g. --cost 0.03)
list      events, newest first (default limit 50)
spending  exact totals per agent and currency over [since, until)
import    appends events from a CSV file (header: agent_id, resource_type,
          quantity, cost, and optionally currency, timestamp) or a JSON
          lines file (one object per line, same fields plus
          event_metadata); all or nothing, with progress on a terminal
AGENT is a principal's name or id.
]==]

local SPEC = { resource = "value", quantity = "value", cost = "value", currency = "value",
               at = "value", metadata = "value", since = "value", ["until"] = "value",
               limit = "value", agent = "value", json = "flag", batch = "value" }

local function record(ctx, opts, words)
  if not words[2] then error({ usage = "ledger record needs an AGENT" }, 0) end
  for _, k in ipairs({ "resource", "quantity", "cost" }) do
    if not opts[k] then error({ usage = "ledger record needs --" .. k }, 0) end
  end
  local metadata = task.json_option("metadata", opts.metadata)
  local event = ctx.manager():session_scope(function(s)
    local agent = task.need_principal(s, words[2])
    local e = s:add(models.LedgerEvent {
      agent_id = agent.principal_id, resource_type = opts.resource, quantity = opts.quantity,
      cost = opts.cost, currency = opts.currency, timestamp = opts.at, event_metadata = metadata,
    })
    s:flush()
    return e
  end)
  task.emit(opts, event, function() io.write("recorded ", tostring(event), "\n") end)
end

local function list(ctx, opts, words)
  local limit = math.tointeger(tonumber(opts.limit or "50"))
  if not limit or limit < 0 then error({ usage = "--limit must be a non-negative integer" }, 0) end
  local events = ctx.manager():session_scope(function(s)
    local filters = {}
    if words[2] then filters.agent_id = task.need_principal(s, words[2]).principal_id end
    if opts.since then filters.timestamp = { ">=", opts.since } end
    local found = s:query("LedgerEvent", filters, { order_by = "event_id desc", limit = limit })
    if opts["until"] then
      local before = core.Instant(opts["until"])
      local kept = {}
      for _, e in ipairs(found) do if e.timestamp < before then kept[#kept + 1] = e end end
      found = kept
    end
    return found
  end)
  task.emit(opts, events, function()
    task.print_table(events, { "event_id", "timestamp", "agent_id", "resource_type", "quantity", "cost", "currency" })
  end)
end

local function totals(ctx, opts)
  local result = ctx.manager():session_scope(function(s)
    local agent_id
    if opts.agent then agent_id = task.need_principal(s, opts.agent).principal_id end
    return spending.totals(s, { from = opts.since, to = opts["until"], agent_id = agent_id })
  end)
  task.emit(opts, result, function()
    task.print_table(result, { "agent_id", "currency", "total", "quantity", "events" })
  end)
end

-- CSV: a header line naming the columns, then one event per line; fields
-- may be double-quoted ("" inside quotes is a quote).
local function csv_fields(line)
  local out, i, n = {}, 1, #line
  while i <= n + 1 do
    if line:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while true do
        local c = line:sub(j, j)
        if c == "" then error({ usage = "unterminated quote in CSV line: " .. line:sub(1, 80) }, 0) end
        if c == '"' then
          if line:sub(j + 1, j + 1) == '"' then buf[#buf + 1] = '"'; j = j + 2
          else j = j + 1 break end
        else buf[#buf + 1] = c; j = j + 1 end
      end
      out[#out + 1] = table.concat(buf)
      i = j + 1
    else
      local j = line:find(",", i, true) or (n + 1)
      out[#out + 1] = line:sub(i, j - 1)
      i = j + 1
    end
  end
  return out
end

local function read_events(path)
  local f, err = io.open(path, "r")
  if not f then error(core.Error { kind = "io", message = "cannot read " .. tostring(err) }, 0) end
  local lines = {}
  for line in f:lines() do
    line = line:gsub("\r$", "")
    if line:match("%S") then lines[#lines + 1] = line end
  end
  f:close()
  local records = {}
  if path:match("%.csv$") then
    local header = csv_fields(lines[1] or "")
    for i = 2, #lines do
      local fields, rec = csv_fields(lines[i]), {}
      for k, name in ipairs(header) do
        if fields[k] ~= nil and fields[k] ~= "" then rec[name] = fields[k] end
      end
      rec._line = i
      records[#records + 1] = rec
    end
  else
    for i, line in ipairs(lines) do
      local ok, rec = pcall(core.json_decode, line)
      if not ok or type(rec) ~= "table" then
        error(core.Error { kind = "validation", message = string.format("%s:%d: not a JSON object", path, i) }, 0)
      end
      rec._line = i
      records[#records + 1] = rec
    end
  end
  return records
end

local function import(ctx, opts, words)
  local path = words[2]
  if not path then error({ usage = "ledger import needs a FILE" }, 0) end
  local batch = math.tointeger(tonumber(opts.batch or "1000"))
  if not batch or batch < 1 then error({ usage = "--batch must be a positive integer" }, 0) end
  local records = read_events(path)
  local bar = progress.new { total = #records, label = "importing", tty = ctx.isatty("stderr") }
  -- Validate every record first: a bad line stops the import before
  -- anything is written, naming the file and line.
  local events = {}
  for i, rec in ipairs(records) do
    local line = rec._line
    rec._line = nil
    local ok, e = pcall(models.LedgerEvent, rec)
    if not ok then
      local msg = core.is_error(e) and e.message or tostring(e)
      error(core.Error { kind = "validation", message = string.format("%s:%d: %s", path, line, msg) }, 0)
    end
    events[i] = e
  end
  ctx.manager():session_scope(function(s)
    for i, e in ipairs(events) do
      s:add(e)
      if i % batch == 0 then
        s:flush()
        bar:update(i)
      end
    end
    s:flush()
  end)
  bar:update(#events)
  bar:finish()
  task.emit(opts, { imported = #events }, function() io.write("imported ", #events, " events\n") end)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC,
                       { record = record, list = list, spending = totals, import = import })
end

return M
