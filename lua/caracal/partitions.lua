--- Monthly partitions of the ledgers (`ledger_events`,
-- `authority_ledger_events`), partitioned by migration 0003: make them
-- ahead of time and see what they hold.
--
--    local partitions = require "caracal.partitions"
--    manager:session_scope(function(s)
--      partitions.create(s, { months = 3 })   -- this month and the next 3, both ledgers
--      for _, p in ipairs(partitions.list(s)) do print(p.partition, p.rows, p.size) end
--    end)
--
-- A partition holds one UTC month of "timestamp": `<ledger>_YYYY_MM`,
-- from the month's first instant to the next month's. Rows outside every
-- monthly partition land in `<ledger>_default`. Making a month's partition
-- is idempotent, and rows that already sit in the default partition for
-- that month are moved into it unchanged (the SQL function
-- `caracal_ledger_partition(ledger, month)` does the work, so psql or a
-- scheduler can call it too). Making partitions needs the ledgers' owner
-- (the role that runs migrations), and takes a short exclusive lock on the
-- ledger: run it ahead of time, from a scheduled job, not at the start
-- of a month.
-- @module caracal.partitions
local core = require "caracal.core"

local M = {}

--- The partitioned ledgers.
M.LEDGERS = { "ledger_events", "authority_ledger_events" }

local KNOWN = {}
for _, l in ipairs(M.LEDGERS) do KNOWN[l] = true end

local function fail(kind, fmt, ...)
  error(core.Error { kind = kind, message = string.format(fmt, ...) }, 0)
end

local function ledgers_of(opts)
  local list = opts and opts.ledgers or M.LEDGERS
  if type(list) == "string" then list = { list } end
  for _, l in ipairs(list) do
    if not KNOWN[l] then
      fail("validation", "unknown ledger '%s' (partitioned ledgers: %s)", tostring(l), table.concat(M.LEDGERS, ", "))
    end
  end
  return list
end

--- Is this ledger partitioned (schema at revision 0003 or later)?
-- @param session
-- @tparam string ledger
-- @treturn boolean
function M.is_partitioned(session, ledger)
  return session:scalar("SELECT c.relkind = 'p' AS p FROM pg_class c WHERE c.oid = to_regclass($1::text)",
    ledger) == true
end

local function need_partitioned(session, ledger)
  if not M.is_partitioned(session, ledger) then
    fail("schema", "%s is not partitioned: upgrade the schema first (caracal db upgrade head; revision 0003 " ..
      "partitions the ledgers)", ledger)
  end
end

-- "YYYY-MM" or "YYYY-MM-DD" (any day of the month) -> "YYYY-MM-01".
local function month_text(v)
  if core.is_instant(v) then v = v:naive() end
  if type(v) ~= "string" then fail("validation", "a month is 'YYYY-MM' or an Instant, got %s", type(v)) end
  local y, m = v:match("^(%d%d%d%d)%-(%d%d)")
  local mi = tonumber(m)
  if not y or not mi or mi < 1 or mi > 12 then fail("validation", "a month is 'YYYY-MM', got '%s'", v) end
  return string.format("%s-%02d-01", y, mi)
end

--- Make the monthly partitions from a month on, for each ledger.
-- Idempotent: existing partitions are left as they are.
-- @param session a Session (the caller's transaction, or one per call)
-- @tparam[opt] table opts `months` (how many months after the first to
-- cover as well, default 3: the first month and the 3 after it), `from`
-- (the first month: "YYYY-MM" or an Instant; default the current UTC
-- month), `ledgers` (default both)
-- @treturn table list of `{ledger, partition, month ("YYYY-MM"), created
-- (boolean), moved (rows taken over from the default partition)}`
function M.create(session, opts)
  opts = opts or {}
  local months = opts.months == nil and 3 or opts.months
  if math.type(months) ~= "integer" or months < 0 or months > 1200 then
    fail("validation", "months must be an integer from 0 to 1200, got %s", tostring(months))
  end
  local ledgers = ledgers_of(opts)
  local first = opts.from and month_text(opts.from) or nil
  return session:session_scope(function(s)
    local list = s:execute([[SELECT to_char(date_trunc('month', coalesce($1::date::timestamp,
        now() AT TIME ZONE 'UTC')) + make_interval(months => g), 'YYYY-MM-DD') AS month
      FROM generate_series(0, $2::int) g ORDER BY g]], first, months)
    local out = {}
    for _, ledger in ipairs(ledgers) do
      need_partitioned(s, ledger)
      for _, row in ipairs(list) do
        local r = s:first("SELECT partition_name, created, moved FROM caracal_ledger_partition($1::regclass, $2::date)",
          ledger, row.month)
        out[#out + 1] = { ledger = ledger, partition = r.partition_name, month = row.month:sub(1, 7),
                          created = r.created, moved = r.moved }
      end
    end
    return out
  end)
end

--- The partitions of the ledgers, oldest month first, the default one last.
-- @param session
-- @tparam[opt] table opts `exact` (count the rows instead of the
-- planner's estimate), `ledgers` (default both)
-- @treturn table list of `{ledger, partition, default (boolean), from, to
-- (Instants; nil for the default partition), rows (estimate, nil when the
-- table was never analysed; exact with opts.exact), exact (boolean),
-- bytes (pg_total_relation_size: table, indexes and TOAST), size (the
-- same, readable)}`
function M.list(session, opts)
  opts = opts or {}
  local ledgers = ledgers_of(opts)
  return session:session_scope(function(s)
    local out = {}
    for _, ledger in ipairs(ledgers) do
      need_partitioned(s, ledger)
      local rows = s:execute([[
        SELECT c.relname::text AS partition, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']*)''\)')::timestamptz AS range_from,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']*)''\)')::timestamptz AS range_to,
               CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS estimate,
               pg_total_relation_size(c.oid) AS bytes, pg_size_pretty(pg_total_relation_size(c.oid)) AS size
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1::text)
         ORDER BY (pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'), 3, c.relname]], ledger)
      for _, r in ipairs(rows) do
        local p = { ledger = ledger, partition = r.partition, default = r.is_default, from = r.range_from,
                    to = r.range_to, rows = r.estimate, exact = false, bytes = r.bytes, size = r.size }
        if opts.exact then
          local q = s:connection():quote_ident(r.partition)
          p.rows = s:scalar("SELECT count(*) FROM " .. q)
          p.exact = true
        end
        out[#out + 1] = p
      end
    end
    return out
  end)
end

return M
