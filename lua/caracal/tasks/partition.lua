--- `caracal partition create|list`: the ledgers' monthly partitions.
-- @module caracal.tasks.partition
local partitions = require "caracal.partitions"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal partition create [--months N] [--from YYYY-MM] [--json]
       caracal partition list [--exact] [--json]

create  makes the monthly partitions of ledger_events and
        authority_ledger_events for the current month (or --from) and the
        N months after it (default 3); existing ones are kept, rows the
        default partition holds for a new month are moved into it. Run it
        ahead of time (e.g. monthly from cron) as the ledgers' owner.
list    each partition with its range, rows (the planner's estimate, or
        counted with --exact) and size on disk (table, indexes, TOAST)
]==]

local SPEC = { months = "value", from = "value", exact = "flag", json = "flag" }

local handlers = {}

function handlers.create(ctx, opts)
  local months = 3
  if opts.months then
    months = math.tointeger(tonumber(opts.months))
    if not months or months < 0 then error({ usage = "--months must be a non-negative integer" }, 0) end
  end
  if opts.from and not opts.from:match("^%d%d%d%d%-%d%d$") then
    error({ usage = "--from must be a month as YYYY-MM" }, 0)
  end
  local list = ctx.manager():session_scope(function(s)
    return partitions.create(s, { months = months, from = opts.from })
  end)
  task.emit(opts, list, function()
    local made = 0
    for _, p in ipairs(list) do
      if p.created then
        made = made + 1
        io.write(string.format("created %s%s\n", p.partition,
          p.moved > 0 and string.format(" (moved %d rows from the default partition)", p.moved) or ""))
      end
    end
    io.write(string.format("%d partition%s created, %d already there\n", made, made == 1 and "" or "s",
      #list - made))
  end)
end

function handlers.list(ctx, opts)
  local list = ctx.manager():session_scope(function(s)
    return partitions.list(s, { exact = opts.exact })
  end)
  task.emit(opts, list, function()
    local rows = {}
    for i, p in ipairs(list) do
      rows[i] = {
        partition = p.partition,
        from = p.default and "(default)" or tostring(p.from),
        to = p.default and "" or tostring(p.to),
        rows = p.rows == nil and "?" or ((p.exact and "" or "~") .. tostring(p.rows)),
        size = p.size,
      }
    end
    task.print_table(rows, { "partition", "from", "to", "rows", "size" })
  end)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
