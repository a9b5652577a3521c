-- LuaSQL (lua-sql-postgres), the usual Lua binding, doing the benchmark's work.
--
--    lua5.4 bench/luasql_bench.lua MODE URL N [READS]
--
--   commit   per event: INSERT ... RETURNING * in autocommit, row fetched
--   batch    N INSERT ... RETURNING * in one transaction (setautocommit(false) + commit)
--   read     READS times the SUM(cost)-per-agent query
--
-- LuaSQL has no parameters: values are escaped (conn:escape) into the SQL
-- text, and every value comes back as a string. The events are
-- bench/data.lua's. Prints one JSON line.
local script_dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = script_dir .. "/?.lua;" .. package.path

local data = require "data"
local driver = require "luasql.postgres"

local mode, url = arg[1], arg[2]
local n = math.tointeger(tonumber(arg[3] or "")) or 20000
local reads = math.tointeger(tonumber(arg[4] or "")) or 2000

-- Stock Lua has no sub-second wall clock: ask date(1) (about a
-- millisecond per call, twice per run).
local function clock()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local env = driver.postgres()
local conn = assert(env:connect(url)) -- a URI is accepted as the database name
local function q(s) return "'" .. conn:escape(s) .. "'" end

local rows = {}
if mode ~= "read" then
  for i = 1, n do
    rows[i] = string.format(
      'INSERT INTO "ledger_events" ("agent_id", "timestamp", "resource_type", "quantity", "cost", ' ..
      '"currency", "metadata", "merkle_root_id") VALUES (%s, %s, %s, %s, %s, %s, %s, NULL) RETURNING *',
      q(data.agent_of(i)), q(data.ts_text(data.ts_us(i))), q(data.resource(i)), q(data.quantity(i)),
      q(data.cost(i)), q(data.currency(i)), q('{"seq": ' .. i .. '}'))
  end
end

local function insert(sql)
  local cur = assert(conn:execute(sql))
  local row = cur:fetch({}, "a")
  cur:close()
  return row
end

local result = { variant = "luasql_" .. mode, n = n }
local t0, t1
if mode == "commit" then
  t0 = clock()
  for i = 1, n do insert(rows[i]) end
  t1 = clock()
elseif mode == "batch" then
  t0 = clock()
  conn:setautocommit(false)
  for i = 1, n do insert(rows[i]) end
  conn:commit()
  t1 = clock()
elseif mode == "read" then
  local total = 0
  t0 = clock()
  for qn = 0, reads - 1 do
    local from, to = data.read_range(qn, n)
    local cur = assert(conn:execute(string.format(
      'SELECT agent_id, SUM(cost) AS total FROM ledger_events WHERE "timestamp" >= %s AND "timestamp" < %s ' ..
      'GROUP BY agent_id ORDER BY agent_id', q(data.ts_text(from)), q(data.ts_text(to)))))
    local row = cur:fetch({}, "a")
    while row do
      total = total + data.micros_of(row.total)
      row = cur:fetch(row, "a")
    end
    cur:close()
  end
  t1 = clock()
  result.n = reads
  result.check = data.format_micros(total)
else
  io.stderr:write("luasql_bench: unknown mode " .. tostring(mode) .. "\n")
  os.exit(2)
end
conn:close()
env:close()
result.seconds = t1 - t0
result.rate = result.n / result.seconds
result.rss_kb = data.peak_rss_kb()
data.emit(result)
