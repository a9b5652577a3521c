-- Caracal's side of the benchmark (bench/run.sh runs one mode per process):
--
--    build/caracal bench/caracal_bench.lua MODE URL N [READS|ITERATIONS]
--
--   commit   per event: session:add(LedgerEvent{...}); session:commit()
--   scope    per event: manager:session_scope(function(s) s:add(...) end)
--   batch    N session:add + one commit (the pipelined flush)
--   bulk     session:bulk_insert(LedgerEvent, rows) + commit (COPY)
--   read     READS times the SUM(cost)-per-agent query over a time range
--   pool     ITERATIONS pool:checkout() + conn:release() from Lua
--   memory   a warm pool of 10, then the read workload, one scope per query
--
-- The events are bench/data.lua's. The values are made before the clock
-- starts, as typed values (Decimal, Instant), the way an application
-- holds them; constructing the model objects (defaults, validation) is
-- timed, as it is part of the API's cost. Prints one JSON line.
local script_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = script_dir .. "/?.lua;" .. package.path

local core = require "caracal.core"
local db = require "caracal.db"
local models = require "caracal.models"
local data = require "data"

local mode, url = arg[1], arg[2]
local n = math.tointeger(tonumber(arg[3] or "")) or 20000
local reads = math.tointeger(tonumber(arg[4] or "")) or 2000
if not (mode and url) then
  io.stderr:write("usage: caracal bench/caracal_bench.lua MODE URL N [READS]\n")
  os.exit(2)
end

local LedgerEvent = models.LedgerEvent
local now = core.utcnow

local function rows_of(count)
  local rows = {}
  for i = 1, count do
    rows[i] = {
      agent_id = data.agent_of(i),
      timestamp = core.instant_from_micros(data.ts_us(i)),
      resource_type = data.resource(i),
      quantity = core.Decimal(data.quantity(i)),
      cost = core.Decimal(data.cost(i)),
      currency = data.currency(i),
      event_metadata = { seq = i },
    }
  end
  return rows
end

local function manager(size)
  return db.create_connection_manager({ url = url, pool_size = size or 1, max_overflow = 0 })
end

-- Connect before the clock starts.
local function warm(m)
  m:session_scope(function(s) s:scalar("select 1") end)
end

local function run_reads(m, per_scope)
  local total = core.Decimal("0")
  local function one(s, q)
    local from, to = data.read_range(q, n)
    local rows = s:execute(data.READ_SQL, core.instant_from_micros(from), core.instant_from_micros(to))
    for _, r in ipairs(rows) do total = total + r.total end
  end
  if per_scope then
    for q = 0, reads - 1 do m:session_scope(function(s) one(s, q) end) end
  else
    local s = m:session()
    for q = 0, reads - 1 do one(s, q) end
    s:commit()
    s:close()
  end
  return total
end

local result = { variant = "caracal_" .. mode, n = n }
local t0, t1

if mode == "commit" then
  local rows = rows_of(n)
  local m = manager()
  warm(m)
  local s = m:session()
  t0 = now()
  for i = 1, n do
    s:add(LedgerEvent(rows[i]))
    s:commit()
  end
  t1 = now()
  s:close()
elseif mode == "scope" then
  local rows = rows_of(n)
  local m = manager()
  warm(m)
  t0 = now()
  for i = 1, n do
    m:session_scope(function(s) s:add(LedgerEvent(rows[i])) end)
  end
  t1 = now()
elseif mode == "batch" then
  local rows = rows_of(n)
  local m = manager()
  warm(m)
  t0 = now()
  m:session_scope(function(s)
    for i = 1, n do s:add(LedgerEvent(rows[i])) end
  end)
  t1 = now()
elseif mode == "bulk" then
  local rows = rows_of(n)
  local m = manager()
  warm(m)
  t0 = now()
  m:session_scope(function(s) s:bulk_insert(LedgerEvent, rows) end)
  t1 = now()
elseif mode == "read" then
  local m = manager()
  warm(m)
  t0 = now()
  result.check = tostring(run_reads(m, false))
  t1 = now()
  result.n = reads
elseif mode == "pool" then
  local iterations = reads
  local m = manager()
  warm(m)
  local pool = m.pool
  t0 = now()
  for _ = 1, iterations do
    local c = pool:checkout("bench")
    c:release()
  end
  t1 = now()
  result.n = iterations
elseif mode == "memory" then
  local m = manager(10)
  m.pool:prewarm(10)
  t0 = now()
  result.check = tostring(run_reads(m, true))
  t1 = now()
  result.n = reads
  result.pool = m:get_pool_status().total
else
  io.stderr:write("caracal_bench: unknown mode " .. tostring(mode) .. "\n")
  os.exit(2)
end

result.seconds = t1 - t0
result.rate = result.n / result.seconds
result.rss_kb = data.peak_rss_kb()
result.private_kb = data.private_kb()
data.emit(result)
