--- The benchmark's data: N deterministic ledger events, the same in every
-- variant (bench/libpq_floor.c and bench/sqlalchemy_bench.py compute the
-- same values), so each variant's stored rows can be compared by digest.
--
-- Event i (1-based): agent (i % 16) + 1 of 16 fixed principals; timestamp
-- 2024-01-01T00:00:00Z + i * 1.000003 s; resource_type api.bench.<i % 7>;
-- quantity i.<(i * 7919) % 10^6> (unique: the digest orders by it);
-- cost 0.<(i * 37) % 10^6>; currency EUR when i % 5 == 0, else USD;
-- metadata {"seq": i}.
--
-- Plain Lua (no Caracal), so LuaSQL's variant under lua5.4 can use it.
local M = {}

M.NAGENTS = 16
M.T0_US = 1704067200 * 1000000
M.STEP_US = 1000003
M.READ_WINDOW = 200

function M.agent(k) return string.format("00000000-0000-4000-8000-%012d", k) end
function M.agent_of(i) return M.agent(i % M.NAGENTS + 1) end

function M.ts_us(i) return M.T0_US + i * M.STEP_US end

--- PostgreSQL text of a UTC instant in microseconds.
function M.ts_text(us)
  return os.date("!%Y-%m-%d %H:%M:%S", us // 1000000) .. string.format(".%06d+00", us % 1000000)
end

function M.resource(i) return "api.bench." .. (i % 7) end
function M.quantity(i) return string.format("%d.%06d", i, (i * 7919) % 1000000) end
function M.cost(i) return string.format("0.%06d", (i * 37) % 1000000) end
function M.currency(i) return i % 5 == 0 and "EUR" or "USD" end

--- The read query's range q: [from, to) in microseconds.
function M.read_range(q, n)
  local span = n > M.READ_WINDOW and n - M.READ_WINDOW or 1
  local first = 1 + (q * 7919) % span
  return M.ts_us(first), M.ts_us(first + M.READ_WINDOW)
end

M.READ_SQL = 'SELECT agent_id, SUM(cost) AS total FROM ledger_events ' ..
             'WHERE "timestamp" >= $1 AND "timestamp" < $2 GROUP BY agent_id ORDER BY agent_id'

--- NUMERIC text (at most 6 decimals) to an integer of millionths.
function M.micros_of(s)
  local neg, whole, frac = s:match("^(%-?)(%d*)%.?(%d*)$")
  frac = (frac .. "000000"):sub(1, 6)
  local v = tonumber(whole ~= "" and whole or "0") * 1000000 + tonumber(frac)
  return neg == "-" and -v or v
end

function M.format_micros(v)
  return string.format("%d.%06d", v // 1000000, v % 1000000)
end

--- Peak resident memory of this process (VmHWM), in kB.
function M.peak_rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return -1 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)")) or -1
end

--- Memory of this process now that is its own (Private_Clean +
-- Private_Dirty of /proc/self/smaps_rollup), in kB: peak RSS also counts
-- the pages of shared libraries other processes use too.
function M.private_kb()
  local f = io.open("/proc/self/smaps_rollup")
  if not f then return -1 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match("Private_Clean:%s*(%d+)")) or 0) + (tonumber(s:match("Private_Dirty:%s*(%d+)")) or 0)
end

--- One JSON result line (values: numbers and plain strings only).
function M.emit(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "string" then v = string.format("%q", v)
    elseif math.type(v) == "float" then v = string.format("%.6f", v)
    else v = tostring(v) end
    parts[#parts + 1] = string.format("%q:%s", k, v)
  end
  io.write("{", table.concat(parts, ","), "}\n")
end

return M
