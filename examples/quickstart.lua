-- Quick start: record an agent's spending and read it back exactly.
-- Run with `make run`, or `build/caracal examples/quickstart.lua` once the
-- database is migrated (`build/caracal db upgrade head`).
--
-- In scope, as in every script the host runs: `caracal`, the models
-- (Principal, LedgerEvent, ...) and `db`, a connection manager.
local Decimal = caracal.Decimal

local name = "quickstart-agent-" .. caracal.uuid4():sub(1, 8)

local agent = db:session_scope(function(session)
  local agent = Principal {
    name = name,
    principal_type = "agent",
    owner = "user@example.com",
    principal_metadata = { team = "research" },
  }
  session:add(agent)
  -- A thousand calls at 0.000030 each: exactly 0.030000, no float drift.
  for i = 1, 1000 do
    session:add(LedgerEvent {
      agent_id = agent.principal_id,
      resource_type = "api.openai.gpt4",
      quantity = Decimal(i),
      cost = Decimal("0.000030"),
      event_metadata = { call = i },
    })
  end
  return agent
end)

db:session_scope(function(session)
  local total = session:scalar(
    "select sum(cost) from ledger_events where agent_id = $1", agent.principal_id)
  local last = session:query(LedgerEvent, { agent_id = agent.principal_id },
                             { order_by = "event_id desc", limit = 1 })[1]
  print(string.format("%s spent %s USD over %d events", agent.name, tostring(total),
    session:scalar("select count(*) from ledger_events where agent_id = $1", agent.principal_id)))
  print("last event: " .. tostring(last))
  assert(total == Decimal("0.030000"), "the total must be exact")
end)

local status = db:get_pool_status()
print(string.format("pool: size %d, checked in %d, checked out %d, overflow %d",
  status.size, status.checked_in, status.checked_out, status.overflow))
print("healthy: " .. tostring(db:health_check()))
