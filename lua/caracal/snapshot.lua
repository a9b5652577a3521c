--- Ledger snapshots: a point-in-time summary of `ledger_events` in the
-- original Caracal Core's format (shared/spec/domain.md "Snapshots").
--
--    local snapshot = require "caracal.snapshot"
--    local snap = snapshot.create(session)
--    for _, s in ipairs(snapshot.list(session)) do print(s) end   -- newest first
--    snapshot.prune(session, {retention_days = 90})
--
-- `snapshot_data` holds the keys domain.md fixes, `agent_spending`
-- (agent UUID -> SUM(cost) as exact decimal text, all currencies
-- together, as the original sums them), `snapshot_timestamp` and
-- `total_events`, plus one key of ours: `last_event_id`, the largest
-- event_id the snapshot covers. `total_events` alone cannot say which
-- events a snapshot covers once ids have gaps (rolled-back appends leave
-- some), and `spending.from_snapshot` needs to know. Readers that index
-- the known keys, the original included, ignore an extra key.
--
-- Creating a snapshot takes `LOCK TABLE ledger_events IN SHARE MODE` for
-- its short transaction: appends in flight commit first and new ones wait,
-- so the count, the sums and last_event_id describe one and the same set
-- of events, and no event with a smaller id can commit later. This needs
-- the table's UPDATE privilege (an admin task's role).
-- @module caracal.snapshot
local core = require "caracal.core"
local models = require "caracal.models"

local M = {}

M.DEFAULT_RETENTION_DAYS = 90

local SNAPSHOT = models.LedgerSnapshot.__table

local function invalid(fmt, ...)
  error(core.Error { kind = "validation", message = string.format(fmt, ...) }, 0)
end

--- Create a snapshot of the ledger now.
-- @param session
-- @treturn table the LedgerSnapshot object as stored
function M.create(session)
  return session:session_scope(function(s)
    s:execute("LOCK TABLE ledger_events IN SHARE MODE")
    local stats = s:first("SELECT count(*) AS n, max(event_id) AS last FROM ledger_events")
    local root = s:scalar("SELECT merkle_root FROM merkle_roots ORDER BY created_at DESC, root_id DESC LIMIT 1")
    local spending = {}
    for _, r in ipairs(s:execute("SELECT agent_id, sum(cost) AS total FROM ledger_events GROUP BY agent_id")) do
      spending[r.agent_id] = tostring(r.total)
    end
    local now = core.utcnow()
    local snap = models.LedgerSnapshot {
      snapshot_timestamp = now, total_events = stats.n, merkle_root = root or "",
      snapshot_data = {
        agent_spending = spending, -- an empty table encodes as {}
        snapshot_timestamp = now:naive(),
        total_events = stats.n,
        last_event_id = stats.last or 0,
      },
      created_at = now,
    }
    s:add(snap)
    s:flush()
    return snap
  end)
end

--- Snapshots, newest first (by created_at).
-- @param session
-- @tparam[opt] table opts `limit` (default 10; `false` for all)
-- @treturn table list of LedgerSnapshot objects
function M.list(session, opts)
  opts = opts or {}
  local limit = opts.limit
  if limit == nil then limit = 10 end
  if limit and (math.type(limit) ~= "integer" or limit < 0) then invalid("limit must be a non-negative integer") end
  return session:session_scope(function(s)
    local rows
    if limit then
      rows = s:execute("SELECT * FROM ledger_snapshots ORDER BY created_at DESC, snapshot_id LIMIT $1", limit)
    else
      rows = s:execute("SELECT * FROM ledger_snapshots ORDER BY created_at DESC, snapshot_id")
    end
    local out = {}
    for i, r in ipairs(rows) do out[i] = models.from_row(SNAPSHOT, r) end
    return out
  end)
end

--- One snapshot by id, or nil.
function M.show(session, snapshot_id)
  if type(snapshot_id) ~= "string" or not core.is_uuid(snapshot_id) then return nil end
  return session:session_scope(function(s)
    local row = s:first("SELECT * FROM ledger_snapshots WHERE snapshot_id = $1", snapshot_id)
    return row and models.from_row(SNAPSHOT, row) or nil
  end)
end

--- Delete snapshots created before the retention window.
-- @param session
-- @tparam[opt] table opts `retention_days` (default 90), `now` (an
-- Instant; default the current time)
-- @treturn integer how many were deleted
function M.prune(session, opts)
  opts = opts or {}
  local days = opts.retention_days or M.DEFAULT_RETENTION_DAYS
  if type(days) ~= "number" or days < 0 then invalid("retention_days must be a non-negative number") end
  local now = opts.now or core.utcnow()
  local cutoff = now - days * 86400
  return session:session_scope(function(s)
    local _, n = s:execute("DELETE FROM ledger_snapshots WHERE created_at < $1", cutoff)
    return n
  end)
end

return M
