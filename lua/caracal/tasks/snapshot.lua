--- `caracal snapshot create|list|show|prune`: ledger snapshots.
-- @module caracal.tasks.snapshot
local core = require "caracal.core"
local snapshot = require "caracal.snapshot"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal snapshot create [--json]
       caracal snapshot list [--limit N] [--json]
       caracal snapshot show ID [--json]
       caracal snapshot prune [--days N] [--yes]

create  records the event count, the newest Merkle root and the exact
        spending of every agent
list    newest first (default 10)
show    one snapshot with its spending per agent
prune   deletes snapshots older than N days (default 90); asks first
]==]

local SPEC = { limit = "value", days = "value", json = "flag", yes = "flag" }

local handlers = {}

function handlers.create(ctx, opts)
  local snap = ctx.manager():session_scope(function(s) return snapshot.create(s) end)
  task.emit(opts, snap, function()
    io.write(string.format("snapshot %s: %d events, merkle root %s\n", snap.snapshot_id,
      snap.total_events, snap.merkle_root ~= "" and snap.merkle_root or "(none)"))
  end)
end

function handlers.list(ctx, opts)
  local limit = math.tointeger(tonumber(opts.limit or "10"))
  if not limit or limit < 0 then error({ usage = "--limit must be a non-negative integer" }, 0) end
  local list = ctx.manager():session_scope(function(s) return snapshot.list(s, { limit = limit }) end)
  task.emit(opts, list, function()
    task.print_table(list, { "snapshot_id", "created_at", "total_events", "merkle_root" })
  end)
end

function handlers.show(ctx, opts, words)
  if not words[2] then error({ usage = "snapshot show needs an ID" }, 0) end
  local snap = ctx.manager():session_scope(function(s) return snapshot.show(s, words[2]) end)
  if not snap then
    error(core.Error { kind = "not_found", message = "unknown snapshot '" .. words[2] .. "'" }, 0)
  end
  task.emit(opts, snap, function()
    io.write(string.format("snapshot %s\ncreated_at    %s\ntotal_events  %d\nmerkle_root   %s\n",
      snap.snapshot_id, tostring(snap.created_at), snap.total_events, snap.merkle_root))
    local rows = { columns = { "agent_id", "spent" } }
    for agent, total in pairs(snap.snapshot_data.agent_spending or {}) do
      rows[#rows + 1] = { agent_id = agent, spent = total }
    end
    table.sort(rows, function(a, b) return a.agent_id < b.agent_id end)
    task.print_table(rows, rows.columns)
  end)
end

function handlers.prune(ctx, opts)
  local days = tonumber(opts.days or "90")
  if not days or days < 0 then error({ usage = "--days must be a non-negative number" }, 0) end
  if not (opts.yes or ctx.yes) and not ctx.confirm(string.format("Delete snapshots older than %s days?", days)) then
    io.stderr:write("caracal: not confirmed; pass --yes to prune without asking\n")
    return 1
  end
  local n = ctx.manager():session_scope(function(s) return snapshot.prune(s, { retention_days = days }) end)
  task.emit(opts, { deleted = n }, function() io.write("deleted ", n, " snapshots\n") end)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
