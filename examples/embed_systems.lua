--- Lua "systems" run by examples/embed_host.c, a game loop at a fixed tick.
--
-- Every few ticks they start tasks (`core.spawn`) that write spending
-- events and read the total back. In non-blocking mode each query yields
-- its task and the host's `caracal_poll` resumes it when the result is
-- in, so no tick ever waits for the database. The demo table is created
-- here if missing, so the example needs no migrations.
--
-- The host calls, in order: `setup()` (as a task), `update(tick)` on every
-- tick (on the main thread: it only starts tasks), and `finish()` (as a
-- task), whose report it prints and checks.
-- @module embed_systems
local core = require "caracal.core"
local db = require "caracal.db"
local Decimal = core.Decimal

local M = { spawned = 0, written = 0, reads = 0, failed = 0 }

local manager
local run_tag     -- marks this run's rows, so concurrent runs never mix
local tick_now = 0
local agents = { "scout", "miner", "trader", "builder" }

--- Create the demo table and the connection manager on the host's pool.
function M.setup()
  manager = db.initialize_connection_manager() -- caracal_Options.pool
  manager:session_scope(function(s)
    s:execute_script([[
      create table if not exists embed_demo_events(
        id bigserial primary key,
        agent text not null,
        cost numeric(20, 6) not null,
        at timestamptz not null default now())]])
  end)
  run_tag = string.format("run-%d-%s", os.time(), core.uuid4():sub(1, 8))
end

-- One spending event, in its own transaction.
local function write_event(agent, cost)
  manager:session_scope(function(s)
    s:execute("insert into embed_demo_events(agent, cost) values ($1, $2)",
              run_tag .. ":" .. agent, cost)
  end)
  M.written = M.written + 1
end

-- What this run has spent so far.
local function read_spending()
  local row = manager:execute(
    "select coalesce(sum(cost), 0) as spent, count(*) as n from embed_demo_events " ..
    "where agent like $1", run_tag .. ":%")[1]
  M.reads = M.reads + 1
  M.last_spent = row.spent
end

-- A report that takes the server a while: the ticks keep coming meanwhile.
local function slow_report(started)
  manager:execute("select pg_sleep(0.3)")
  M.slow_report_ticks = tick_now - started
end

--- Called on every tick: start the work of this tick, never wait for it.
-- @tparam integer tick
function M.update(tick)
  tick_now = tick
  if tick % 3 == 0 then
    local agent = agents[(tick // 3) % #agents + 1]
    -- exact money: 0.000125 per unit, tick units
    core.spawn(write_event, agent, Decimal("0.000125") * Decimal(tick))
    M.spawned = M.spawned + 1
  end
  if tick % 20 == 0 then core.spawn(read_spending) end
  if tick == 5 then core.spawn(slow_report, tick) end
end

--- The run's outcome, read back from the database.
-- @treturn table expected, written (rows found), spent, reads, slow_report_ticks
function M.finish()
  local row = manager:execute(
    "select count(*) as n, coalesce(sum(cost), 0) as spent from embed_demo_events " ..
    "where agent like $1", run_tag .. ":%")[1]
  return {
    expected = M.spawned,
    written = row.n,
    spent = tostring(row.spent),
    reads = M.reads,
    slow_report_ticks = M.slow_report_ticks or -1,
  }
end

return M
