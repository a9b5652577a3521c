-- Model constructors: defaults and every kind of rejection (no database).
local core = require "caracal.core"
local models = require "caracal.models"
local schema = require "caracal.schema"
local Principal, ExecutionMandate, LedgerEvent = models.Principal, models.ExecutionMandate, models.LedgerEvent

local AGENT = "0b6f3c8e-2c39-4a4c-9d33-1b1c7f0a0a01"

local function rejection(model, fields)
  local ok, err = pcall(model, fields)
  assert.is_false(ok)
  assert.is_true(core.is_error(err))
  assert.equal("validation", err.kind)
  return err
end

describe("model constructors", function()
  it("declare all eight tables once, with the seed's attribute names", function()
    assert.same({ "Principal", "ExecutionMandate", "MerkleRoot", "LedgerEvent", "AuthorityLedgerEvent",
                  "AuthorityPolicy", "LedgerSnapshot", "AuditLog" }, models.names())
    assert.equal("metadata", schema.by_model.Principal.by_attr.principal_metadata.name)
    assert.equal("metadata", schema.by_model.ExecutionMandate.by_attr.mandate_metadata.name)
    assert.equal("metadata", schema.by_model.LedgerEvent.by_attr.event_metadata.name)
  end)

  it("work as the seed's three examples are written", function()
    local parent = Principal { name = "parent", principal_type = "user", owner = "user@example.com" }
    local principal = Principal {
      name = "my-agent",
      principal_type = "agent",
      owner = "user@example.com",
      parent_principal_id = parent.principal_id,
      principal_metadata = { key = "value" },
    }
    assert.equal("my-agent", principal.name)
    assert.is_true(core.is_uuid(principal.principal_id))
    local issuer, subject = parent, principal
    local mandate = ExecutionMandate {
      issuer_id = issuer.principal_id,
      subject_id = subject.principal_id,
      valid_from = caracal and caracal.utcnow() or core.utcnow(),
      valid_until = core.utcnow() + 86400,
      resource_scope = { "*" },
      action_scope = { "*" },
      signature = "...",
    }
    assert.is_false(mandate.revoked)
    assert.equal(0, mandate.delegation_depth)
    local event = LedgerEvent {
      agent_id = principal.principal_id,
      timestamp = core.utcnow(),
      resource_type = "api.openai.gpt4",
      quantity = core.Decimal("1000"),
      cost = core.Decimal("0.03"),
      currency = "USD",
      event_metadata = { model = "gpt-4" },
    }
    assert.equal("0.03", tostring(event.cost))
    assert.equal("LedgerEvent<new agent_id=" .. principal.principal_id .. " cost=0.03 currency=USD>", tostring(event))
  end)

  it("fill every client-side default", function()
    local before = core.utcnow()
    local p = Principal { name = "a", principal_type = "agent", owner = "o" }
    assert.is_true(core.is_uuid(p.principal_id))
    assert.is_true(p.created_at >= before)
    local e = LedgerEvent { agent_id = AGENT, resource_type = "r", quantity = 1, cost = "0" }
    assert.equal("USD", e.currency)
    assert.is_true(core.is_instant(e.timestamp))
    assert.is_nil(e.event_id)
    local pol = models.AuthorityPolicy { principal_id = AGENT, max_validity_seconds = 60,
      allowed_resource_patterns = {}, allowed_actions = { "read" }, created_by = "admin" }
    assert.same({ false, 0, true }, { pol.allow_delegation, pol.max_delegation_depth, pol.active })
    assert.equal("[]", core.json_encode(pol.allowed_resource_patterns)) -- an empty array stays an array
    local root = models.MerkleRoot { merkle_root = string.rep("a", 64), signature = "00", event_count = 1,
      first_event_id = 1, last_event_id = 1 }
    assert.equal("live", root.source)
    assert.is_true(core.is_uuid(root.batch_id))
  end)

  it("accept uuids in any usual form and normalise them", function()
    local e = LedgerEvent { agent_id = "{" .. AGENT:upper() .. "}", resource_type = "r", quantity = 1, cost = 1 }
    assert.equal(AGENT, e.agent_id)
  end)

  it("reject unknown fields, naming a close one", function()
    local err = rejection(Principal, { name = "a", type = "agent", owner = "o" })
    assert.equal("Principal: unknown field 'type' (did you mean 'principal_type'?)", err.message)
    assert.equal("Principal", err.model)
  end)

  it("reject missing required fields", function()
    local err = rejection(Principal, { name = "a", principal_type = "agent" })
    assert.equal("Principal.owner: is required", err.message)
    assert.equal("owner", err.field)
  end)

  it("reject wrong types", function()
    assert.equal("Principal.name: expected a string, got number",
                 rejection(Principal, { name = 5, principal_type = "agent", owner = "o" }).message)
    assert.equal('ExecutionMandate.issuer_id: expected a UUID, got "nope"',
                 rejection(ExecutionMandate, { issuer_id = "nope", subject_id = AGENT, valid_from = 0,
                   valid_until = 1, resource_scope = {}, action_scope = {}, signature = "s" }).message)
    assert.equal("ExecutionMandate.revoked: expected true or false, got \"no\"",
                 rejection(ExecutionMandate, { issuer_id = AGENT, subject_id = AGENT, valid_from = 0,
                   valid_until = 1, resource_scope = {}, action_scope = {}, signature = "s", revoked = "no" }).message)
    assert.equal("ExecutionMandate.resource_scope: expected an array of strings, element 2 is 3",
                 rejection(ExecutionMandate, { issuer_id = AGENT, subject_id = AGENT, valid_from = 0,
                   valid_until = 1, resource_scope = { "a", 3 }, action_scope = {}, signature = "s" }).message)
    assert.equal("ExecutionMandate.delegation_depth: expected an integer, got the float 1.5",
                 rejection(ExecutionMandate, { issuer_id = AGENT, subject_id = AGENT, valid_from = 0,
                   valid_until = 1, resource_scope = {}, action_scope = {}, signature = "s", delegation_depth = 1.5 }).message)
  end)

  it("reject strings over their VARCHAR length, counting characters", function()
    local long = string.rep("é", 256)
    assert.equal("Principal.name: expected at most 255 characters, got 256",
                 rejection(Principal, { name = long, principal_type = "agent", owner = "o" }).message)
    assert.equal(255, utf8.len(Principal { name = string.rep("é", 255), principal_type = "agent", owner = "o" }.name))
    assert.equal("Principal.name: a string cannot contain a NUL byte",
                 rejection(Principal, { name = "a\0b", principal_type = "agent", owner = "o" }).message)
    assert.equal("Principal.name: the string is not valid UTF-8",
                 rejection(Principal, { name = "a\xC3\x28", principal_type = "agent", owner = "o" }).message)
  end)

  it("reject values outside an enumeration", function()
    assert.equal('AuthorityLedgerEvent.event_type: expected one of issued, validated, denied, revoked, got "approved"',
                 rejection(models.AuthorityLedgerEvent, { event_type = "approved", principal_id = AGENT }).message)
    assert.equal('AuthorityLedgerEvent.decision: expected one of allowed, denied, got "maybe"',
                 rejection(models.AuthorityLedgerEvent, { event_type = "validated", principal_id = AGENT,
                   decision = "maybe" }).message)
    assert.equal('Principal.principal_type: expected one of agent, user, service, got "robot"',
                 rejection(Principal, { name = "a", principal_type = "robot", owner = "o" }).message)
    assert.equal('LedgerEvent.currency: expected three upper-case letters, got "usd"',
                 rejection(LedgerEvent, { agent_id = AGENT, resource_type = "r", quantity = 1, cost = 1,
                   currency = "usd" }).message)
  end)

  it("reject inexact and oversized decimals before a round trip", function()
    local base = { agent_id = AGENT, resource_type = "r", quantity = 1 }
    local function with_cost(c)
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      t.cost = c
      return t
    end
    assert.equal('LedgerEvent.cost: got the float 0.1, which is not exact; pass a string ("0.1") or a Decimal',
                 rejection(LedgerEvent, with_cost(0.1)).message)
    assert.equal("LedgerEvent.cost: 100000000000000 has 15 digits before the point, NUMERIC(20,6) allows 14",
                 rejection(LedgerEvent, with_cost("100000000000000")).message)
    assert.equal("LedgerEvent.cost: 0.0000001 has 7 decimal places, NUMERIC(20,6) allows 6",
                 rejection(LedgerEvent, with_cost("0.0000001")).message)
    assert.equal('LedgerEvent.cost: expected a decimal, got "abc"', rejection(LedgerEvent, with_cost("abc")).message)
    assert.equal("99999999999999.999999", tostring(LedgerEvent(with_cost("99999999999999.999999")).cost))
    assert.equal("-5", tostring(LedgerEvent(with_cost(-5)).cost))
  end)

  it("accept instants as Instants, ISO strings and Unix seconds", function()
    local e = LedgerEvent { agent_id = AGENT, resource_type = "r", quantity = 1, cost = 1,
                            timestamp = "1969-07-20T20:17:40Z" }
    assert.equal("1969-07-20T20:17:40Z", tostring(e.timestamp))
    e = LedgerEvent { agent_id = AGENT, resource_type = "r", quantity = 1, cost = 1, timestamp = 0 }
    assert.equal("1970-01-01T00:00:00Z", tostring(e.timestamp))
    assert.equal('LedgerEvent.timestamp: expected an Instant, an ISO 8601 string or Unix seconds, got "yesterday"',
                 rejection(LedgerEvent, { agent_id = AGENT, resource_type = "r", quantity = 1, cost = 1,
                   timestamp = "yesterday" }).message)
  end)

  it("never show a private key in an error", function()
    local err = rejection(Principal, { name = "a", principal_type = "agent", owner = "o",
                                       private_key_pem = string.rep("K", 4001) })
    assert.equal("***", err.value)
    assert.is_nil(err.message:find("KKKK", 1, true))
  end)
end)
