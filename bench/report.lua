-- The benchmark's report (bench/run.sh calls it): reads the variants' JSON
-- lines, checks that every insert variant stored the floor's rows and every
-- read variant computed the floor's totals, prints the table and a
-- met/MISSED line per target, and writes the machine-readable copy.
--
--    caracal bench/report.lua RESULTS.jsonl OUT.json EVENTS READS PINNING
local core = require "caracal.core"

local input, out_path = arg[1], arg[2]
local events, reads, pinning = tonumber(arg[3]), tonumber(arg[4]), arg[5] or "unpinned"

local v, digests, order = {}, {}, {}
for line in io.lines(input) do
  local ok, t = pcall(core.json_decode, line)
  if ok and type(t) == "table" then
    if t.digest_of then
      digests[t.digest_of] = t
    elseif t.variant then
      if t.variant == "caracal_merkle" then t.rate, t.n = t.build_events_per_s, t.events end
      v[t.variant] = t
      order[#order + 1] = t.variant
    end
  end
end

-- Rows of the table: category, variant, what it does, its floor, its
-- SQLAlchemy and LuaSQL counterparts.
local ROWS = {
  { "commit per event", "c_commit", "libpq: prepared INSERT, autocommit" },
  { "", "caracal_commit", "session:add + session:commit", "c_commit", "sqla_orm_commit", "luasql_commit" },
  { "", "caracal_scope", "manager:session_scope per event", "c_commit", "sqla_orm_commit", "luasql_commit" },
  { "", "sqla_orm_commit", "SQLAlchemy ORM add + commit", "c_commit" },
  { "", "luasql_commit", "LuaSQL INSERT, autocommit", "c_commit" },
  { "many adds, one commit", "c_pipeline", "libpq: pipeline, one transaction" },
  { "", "c_prepared", "libpq: prepared, row by row", "c_pipeline" },
  { "", "caracal_batch", "N session:add + commit", "c_pipeline", "sqla_orm_batch", "luasql_batch" },
  { "", "sqla_orm_batch", "SQLAlchemy ORM add_all + commit", "c_pipeline" },
  { "", "luasql_batch", "LuaSQL row by row, one txn", "c_pipeline" },
  { "bulk", "c_copy", "libpq: COPY FROM STDIN" },
  { "", "caracal_bulk", "session:bulk_insert (COPY)", "c_copy", "sqla_orm_bulk" },
  { "", "sqla_orm_bulk", "SQLAlchemy bulk_insert_mappings", "c_copy" },
  { "read SUM(cost)/agent", "c_read", "libpq: prepared query" },
  { "", "caracal_read", "session:execute", "c_read", "sqla_core_read", "luasql_read" },
  { "", "sqla_core_read", "SQLAlchemy Core select", "c_read" },
  { "", "luasql_read", "LuaSQL query", "c_read" },
  { "pool checkout+checkin", "c_pool", "caracal_pool_checkout/checkin (C)" },
  { "", "caracal_pool", "pool:checkout + conn:release (Lua)", "c_pool", "sqla_pool" },
  { "", "sqla_pool", "QueuePool raw_connection + close", "c_pool" },
  { "start-up", "lua_startup", "lua5.4 -e ''" },
  { "", "caracal_startup", "caracal -e ''", "lua_startup", "sqla_startup" },
  { "", "sqla_startup", "python3 -c 'import sqlalchemy.orm'", "lua_startup" },
  { "warm pool of 10 + reads", "caracal_memory", "host, 10 connections, reads", nil, "sqla_memory" },
  { "", "sqla_memory", "SQLAlchemy, 10 connections, reads" },
  { "merkle (no database)", "caracal_merkle", "hash + build trees" },
}

local function rate(name)
  local t = v[name]
  return t and not t.failed and t.rate or nil
end

local function ratio(a, b)
  local ra, rb = rate(a), b and rate(b)
  if not ra or not rb or rb == 0 then return nil end
  return ra / rb
end

local function fmt_rate(r)
  if not r then return "-" end
  if r >= 1e6 then return string.format("%.2fM", r / 1e6) end
  if r >= 1e4 then return string.format("%.1fk", r / 1e3) end
  return string.format("%.0f", r)
end

local function fmt_ratio(x) return x and string.format("%.2fx", x) or "" end

-- Checks: identical rows (digest and count) and identical read totals.
local checks = {}
local ref = digests.c_pipeline or digests.c_copy
for name, d in pairs(digests) do
  local ok = ref ~= nil and d.digest == ref.digest and d.rows == events
  checks[name] = ok
end
local read_ref = v.c_read and v.c_read.check
for _, name in ipairs({ "caracal_read", "sqla_core_read", "luasql_read", "caracal_memory", "sqla_memory" }) do
  if v[name] and v[name].check then checks[name] = (v[name].check == read_ref) end
end
if read_ref then checks.c_read = true end

local function check_mark(name)
  if checks[name] == nil then return "" end
  return checks[name] and "ok" or "DIFFERS"
end

local function detail(name)
  local t = v[name]
  if not t then return "" end
  if t.failed then return "FAILED" end
  if t.ns_per_op then return string.format("%.0f ns/op", t.ns_per_op) end
  if t.median_ms then return string.format("median %.2f ms", t.median_ms) end
  if name:match("_memory$") and t.private_kb then return string.format("private %.1f MB", t.private_kb / 1024) end
  return ""
end

local lines = {}
local function out(s) lines[#lines + 1] = s end
out(string.format("Caracal benchmark: %d events, %d read queries, %s (rates per second; ratios of rates)", events,
                  reads, pinning))
out("")
local hdr = string.format("%-24s %-17s %-36s %9s %8s %8s %8s %9s %6s  %s", "work", "variant", "how", "rate",
                          "x floor", "x SQLA", "x LuaSQL", "peak RSS", "rows", "")
out(hdr)
out(string.rep("-", #hdr))
local shown = {}
for _, r in ipairs(ROWS) do
  local cat, name, how, floor, sqla, luasql = r[1], r[2], r[3], r[4], r[5], r[6]
  local t = v[name]
  if t then
    shown[name] = true
    local rss = t.rss_kb and t.rss_kb > 0 and string.format("%.1f MB", t.rss_kb / 1024) or "-"
    out(string.format("%-24s %-17s %-36s %9s %8s %8s %8s %9s %6s  %s", cat, name, how, t.failed and "FAILED" or fmt_rate(t.rate),
                      fmt_ratio(ratio(name, floor)), fmt_ratio(ratio(name, sqla)), fmt_ratio(ratio(name, luasql)),
                      rss, check_mark(name), detail(name)))
  elseif cat ~= "" then
    out(string.format("%-24s %-17s %s", cat, name, "(not run)"))
  end
end
if v.c_pool_syscalls then
  out(string.format("%-24s %-17s %s", "", "c_pool_syscalls",
                    string.format("%d system calls in 100000 more checkout/checkin pairs", v.c_pool_syscalls.syscalls)))
end
out("")

-- Targets.
local targets = {}
local function target(what, got, need, cmp, unit)
  local met
  if got == nil then met = nil
  elseif cmp == "<" then met = got < need
  else met = got >= need end
  targets[#targets + 1] = { target = what, got = got, need = need, comparison = cmp or ">=", unit = unit or "x", met = met }
end
target("commit per event >= 0.9x raw libpq", ratio("caracal_commit", "c_commit"), 0.9)
target("many adds + one commit >= 0.8x libpq pipeline", ratio("caracal_batch", "c_pipeline"), 0.8)
target("bulk API >= 0.8x libpq COPY", ratio("caracal_bulk", "c_copy"), 0.8)
target("read query >= 0.9x libpq prepared", ratio("caracal_read", "c_read"), 0.9)
target("commit per event >= 5x SQLAlchemy ORM", ratio("caracal_commit", "sqla_orm_commit"), 5)
target("many adds + one commit >= 5x SQLAlchemy ORM", ratio("caracal_batch", "sqla_orm_batch"), 5)
target("bulk API >= 5x SQLAlchemy ORM (bulk_insert_mappings)", ratio("caracal_bulk", "sqla_orm_bulk"), 5)
target("read query >= 2x SQLAlchemy Core", ratio("caracal_read", "sqla_core_read"), 2)
target("pool checkout+checkin from Lua >= 10x QueuePool", ratio("caracal_pool", "sqla_pool"), 10)
target("pool checkout+checkin from C < 200 ns", v.c_pool and v.c_pool.ns_per_op, 200, "<", " ns")
target("pool fast path makes no system call", v.c_pool_syscalls and v.c_pool_syscalls.syscalls, 1, "<", " calls")
target("host start-up < 10 ms", v.caracal_startup and v.caracal_startup.median_ms, 10, "<", " ms")
local mem_ratio
if v.caracal_memory and v.sqla_memory and v.caracal_memory.rss_kb and v.sqla_memory.rss_kb then
  mem_ratio = v.caracal_memory.rss_kb / v.sqla_memory.rss_kb
end
target("memory, warm pool of 10 < 1/4 of SQLAlchemy's", mem_ratio, 0.25, "<")

local all_ok = true
for name, ok in pairs(checks) do if not ok then all_ok = false end end

out("Targets:")
for _, t in ipairs(targets) do
  local got = t.got and (t.unit == "x" and string.format("%.2fx", t.got) or string.format("%.1f%s", t.got, t.unit))
  local need = t.unit == "x" and string.format("%s %.2fx", t.comparison, t.need) or
               string.format("%s %g%s", t.comparison, t.need, t.unit)
  if t.met == nil then
    out(string.format("  not measured: %s (a variant did not run)", t.target))
  elseif t.met then
    out(string.format("  met: %s (got %s)", t.target, got))
  else
    out(string.format("  MISSED: %s (got %s, need %s)", t.target, got, need))
  end
end
out(all_ok and "Rows: every variant stored identical rows and computed identical totals."
            or "Rows: DIFFERENCES (see the rows column): a variant stored or read something else.")
print(table.concat(lines, "\n"))

local doc = {
  events = events, reads = reads, pinning = pinning, variants = v, targets = targets,
  checks = checks, identical = all_ok, generated = tostring(core.utcnow()),
}
local f = assert(io.open(out_path, "w"))
f:write(core.json_encode(doc), "\n")
f:close()
print("\n(machine-readable copy: " .. out_path .. ")")
