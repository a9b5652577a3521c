--- Spending: exact totals of `ledger_events.cost`, per agent and
-- currency, summed by PostgreSQL as NUMERIC and decoded as `Decimal`
-- (never through floating point).
--
--    local spending = require "caracal.spending"
--    for _, t in ipairs(spending.totals(session, {from = "2024-01-01T00:00:00Z", to = "2024-02-01T00:00:00Z"})) do
--      print(t.agent_id, t.currency, t.total)              -- 12.340000 (a Decimal)
--    end
--
-- Time ranges are half-open: `from <= timestamp < to`, either bound
-- optional; bounds are Instants or ISO 8601 strings (no offset = UTC).
-- @module caracal.spending
local core = require "caracal.core"

local M = {}

local function invalid(fmt, ...)
  error(core.Error { kind = "validation", message = string.format(fmt, ...) }, 0)
end

local function instant(v, name)
  if v == nil or core.is_instant(v) then return v end
  if type(v) == "string" or math.type(v) == "integer" then
    local ok, t = pcall(core.Instant, v)
    if ok then return t end
  end
  invalid("%s must be an Instant or an ISO 8601 string, got %s", name, tostring(v))
end

--- Totals per agent and currency.
-- @param session
-- @tparam[opt] table opts `from`, `to` (the range, half-open), `agent_id`,
-- `currency`
-- @treturn table list of `{agent_id, currency, total (Decimal), quantity
-- (Decimal), events (integer)}` ordered by agent_id, currency
function M.totals(session, opts)
  opts = opts or {}
  local from, to = instant(opts.from, "from"), instant(opts.to, "to")
  local where, args = {}, {}
  local function cond(sql, v)
    args[#args + 1] = v
    where[#where + 1] = sql:format(#args)
  end
  if from then cond('"timestamp" >= $%d', from) end
  if to then cond('"timestamp" < $%d', to) end
  if opts.agent_id ~= nil then
    if type(opts.agent_id) ~= "string" or not core.is_uuid(opts.agent_id) then
      invalid("agent_id must be a UUID, got %s", tostring(opts.agent_id))
    end
    cond("agent_id = $%d", opts.agent_id)
  end
  if opts.currency ~= nil then
    if type(opts.currency) ~= "string" then invalid("currency must be a string") end
    cond("currency = $%d", opts.currency)
  end
  local sql = "SELECT agent_id, currency, sum(cost) AS total, sum(quantity) AS quantity, count(*) AS events " ..
              "FROM ledger_events" .. (#where > 0 and (" WHERE " .. table.concat(where, " AND ")) or "") ..
              " GROUP BY agent_id, currency ORDER BY agent_id, currency"
  return session:session_scope(function(s)
    local rows = s:execute(sql, table.unpack(args, 1, #args))
    local out = {}
    for i, r in ipairs(rows) do
      out[i] = { agent_id = r.agent_id, currency = r.currency, total = r.total, quantity = r.quantity,
                 events = r.events }
    end
    return out
  end)
end

--- Totals per agent over the whole ledger, all currencies together (what
-- a snapshot's agent_spending holds).
-- @treturn table `{[agent_id] = Decimal}`
function M.agent_totals(session)
  return session:session_scope(function(s)
    local out = {}
    for _, r in ipairs(s:execute("SELECT agent_id, sum(cost) AS total FROM ledger_events GROUP BY agent_id")) do
      out[r.agent_id] = r.total
    end
    return out
  end)
end

--- Totals per agent from a snapshot plus the events after it (event_id
-- greater than the snapshot's `last_event_id`): equal to `agent_totals`
-- while the ledger is append-only, without summing the whole history.
-- @param session
-- @tparam string snapshot_id
-- @treturn table `{[agent_id] = Decimal}`, or nil and a message when the
-- snapshot does not exist
-- @treturn table `{snapshot_id, last_event_id, later_events}`
-- @raise caracal.Error (kind "unsupported") for a snapshot without
-- last_event_id (made by another tool: use `agent_totals`)
function M.from_snapshot(session, snapshot_id)
  if type(snapshot_id) ~= "string" or not core.is_uuid(snapshot_id) then
    invalid("snapshot_id must be a UUID, got %s", tostring(snapshot_id))
  end
  return session:session_scope(function(s)
    local snap = s:first("SELECT snapshot_id, snapshot_data FROM ledger_snapshots WHERE snapshot_id = $1", snapshot_id)
    if not snap then return nil, string.format("snapshot %s not found", snapshot_id) end
    local data = snap.snapshot_data or {}
    local last = math.tointeger(data.last_event_id)
    if not last then
      error(core.Error { kind = "unsupported", message = string.format(
        "snapshot %s does not record last_event_id (it was made by another tool), so the events after it " ..
        "cannot be told apart: use spending.agent_totals", snapshot_id) }, 0)
    end
    local out = {}
    for agent, text in pairs(data.agent_spending or {}) do out[agent] = core.Decimal(text) end
    local later = 0
    for _, r in ipairs(s:execute("SELECT agent_id, sum(cost) AS total, count(*) AS n FROM ledger_events " ..
                                 "WHERE event_id > $1 GROUP BY agent_id", last)) do
      out[r.agent_id] = out[r.agent_id] and (out[r.agent_id] + r.total) or r.total
      later = later + r.n
    end
    return out, { snapshot_id = snapshot_id, last_event_id = last, later_events = later }
  end)
end

return M
