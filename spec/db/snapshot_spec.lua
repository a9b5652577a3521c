-- Ledger snapshots and spending totals against a real database (a fresh
-- one for this file): the snapshot format of domain.md, listing,
-- retention, exact per-agent and per-currency sums, and snapshot + later
-- events = a full recomputation.
local core = require "caracal.core"
local crypto = require "caracal.crypto"
local authority = require "caracal.authority"
local merkle = require "caracal.merkle"
local snapshot = require "caracal.snapshot"
local spending = require "caracal.spending"
local ledgerdb = require "ledgerdb"

local D = core.Decimal

describe("snapshots and spending (database)", function()
  local h, agents

  local function scope(fn) return h.manager:session_scope(fn) end

  local function sql(q, ...)
    local args = table.pack(...)
    return scope(function(s) return s:execute(q, table.unpack(args, 1, args.n)) end)
  end

  local function add_event(agent, ts, cost, currency, quantity)
    sql([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost, currency)
          VALUES ($1, $2, 'api.x', $3, $4, $5)]], agent, core.Instant(ts), quantity or "1", cost, currency or "USD")
  end

  local function reset()
    ledgerdb.tamper(h, function(s)
      s:execute("DELETE FROM ledger_snapshots")
      s:execute("DELETE FROM ledger_events")
      s:execute("DELETE FROM merkle_roots")
    end)
  end

  setup(function()
    h = ledgerdb.create("snapshot_spec")
    agents = {}
    scope(function(s)
      for i = 1, 3 do
        agents[i] = authority.add_principal(s, { name = "agent-" .. i, principal_type = "agent", owner = "ops" })
          .principal_id
      end
    end)
  end)

  teardown(function()
    if h then h.close() end
  end)

  before_each(reset)

  describe("snapshots", function()
    it("of an empty ledger: no events, root '' and an empty agent_spending object", function()
      local snap = scope(function(s) return snapshot.create(s) end)
      assert.equal(0, snap.total_events)
      assert.equal("", snap.merkle_root)
      local r = sql([[SELECT snapshot_data, jsonb_typeof(snapshot_data->'agent_spending') AS t,
                             snapshot_timestamp, created_at FROM ledger_snapshots WHERE snapshot_id = $1]],
                    snap.snapshot_id)[1]
      assert.equal("object", r.t)
      assert.same({ agent_spending = {}, snapshot_timestamp = r.snapshot_timestamp:naive(), total_events = 0,
                    last_event_id = 0 }, r.snapshot_data)
      assert.equal(r.snapshot_timestamp, r.created_at)
    end)

    it("records the count, the newest root and exact sums per agent as decimal text", function()
      add_event(agents[1], "2024-01-01T00:00:00Z", "0.1")
      add_event(agents[1], "2024-01-01T00:00:01Z", "0.2")
      add_event(agents[2], "2024-01-01T00:00:02Z", "1000", "EUR")
      add_event(agents[2], "2024-01-01T00:00:03Z", "0.000001")
      local priv = crypto.generate_keypair()
      local s <close> = h.manager:session()
      merkle.batch(s, { signer_private_pem = priv, batch_size = 2 })
      local newest = s:scalar("SELECT merkle_root FROM merkle_roots ORDER BY created_at DESC LIMIT 1")
      s:commit()
      add_event(agents[3], "2024-01-01T00:00:04Z", "7.5")
      local snap = snapshot.create(s)
      assert.equal(5, snap.total_events)
      assert.equal(newest, snap.merkle_root)
      local last = s:scalar("SELECT max(event_id) AS m FROM ledger_events")
      assert.same({
        agent_spending = { [agents[1]] = "0.300000", [agents[2]] = "1000.000001", [agents[3]] = "7.500000" },
        snapshot_timestamp = snap.snapshot_timestamp:naive(), total_events = 5, last_event_id = last,
      }, snap.snapshot_data)
    end)

    it("holds many agents (a long document)", function()
      local ids = scope(function(s)
        local out = {}
        for i = 1, 80 do
          out[i] = authority.add_principal(s, { name = core.uuid4(), principal_type = "agent", owner = "bulk",
                                                generate_keys = false }).principal_id
        end
        return out
      end)
      for i, id in ipairs(ids) do add_event(id, "2024-02-01T00:00:00Z", tostring(i)) end
      local snap = scope(function(s) return snapshot.create(s) end)
      local n = 0
      for id, total in pairs(snap.snapshot_data.agent_spending) do
        n = n + 1
        assert.is_true(core.is_uuid(id))
        assert.equal(total, tostring(D(total):round(6)))
      end
      assert.equal(80, n)
      assert.equal("80.000000", snap.snapshot_data.agent_spending[ids[80]])
    end)

    it("lists newest first, shows one, and prunes by created_at (default 90 days)", function()
      local now = core.utcnow()
      -- Two old snapshots, as an earlier run would have left them.
      for _, age in ipairs({ 100, 91 }) do
        local t = now - age * 86400
        sql([[INSERT INTO ledger_snapshots (snapshot_id, snapshot_timestamp, total_events, merkle_root, snapshot_data,
                                            created_at) VALUES ($1, $2, 0, '', '{}'::jsonb, $2)]], core.uuid4(), t)
      end
      local a = scope(function(s) return snapshot.create(s) end)
      local b = scope(function(s) return snapshot.create(s) end)
      local list = scope(function(s) return snapshot.list(s) end)
      assert.equal(4, #list)
      assert.equal(b.snapshot_id, list[1].snapshot_id)
      assert.equal(a.snapshot_id, list[2].snapshot_id)
      assert.is_true(list[3].created_at > list[4].created_at)
      assert.equal(2, #scope(function(s) return snapshot.list(s, { limit = 2 }) end))
      local shown = scope(function(s) return snapshot.show(s, a.snapshot_id) end)
      assert.equal(a.snapshot_id, shown.snapshot_id)
      assert.same(a.snapshot_data, shown.snapshot_data)
      assert.is_nil(scope(function(s) return snapshot.show(s, core.uuid4()) end))
      assert.equal(2, scope(function(s) return snapshot.prune(s) end))
      assert.equal(2, #scope(function(s) return snapshot.list(s, { limit = false }) end))
      assert.equal(0, scope(function(s) return snapshot.prune(s, { retention_days = 1 }) end))
      assert.equal(2, scope(function(s) return snapshot.prune(s, { retention_days = 0, now = core.utcnow() + 1 }) end))
    end)
  end)

  describe("spending", function()
    before_each(function()
      add_event(agents[1], "2024-01-01T00:00:00Z", "0.1")
      add_event(agents[1], "2024-01-15T12:00:00Z", "0.2")
      add_event(agents[1], "2024-01-20T00:00:00Z", "5", "EUR", "3.5")
      add_event(agents[2], "2024-01-31T23:59:59.999999Z", "99999999999999.999999")
      add_event(agents[2], "2024-02-01T00:00:00Z", "1")
    end)

    it("sums exactly per agent and currency", function()
      local t = scope(function(s) return spending.totals(s) end)
      table.sort(t, function(x, y) return x.agent_id .. x.currency < y.agent_id .. y.currency end)
      local byk = {}
      for _, r in ipairs(t) do byk[r.agent_id .. "/" .. r.currency] = r end
      assert.equal("0.300000", tostring(byk[agents[1] .. "/USD"].total)) -- not 0.30000000000000004
      assert.equal(2, byk[agents[1] .. "/USD"].events)
      assert.equal("5.000000", tostring(byk[agents[1] .. "/EUR"].total))
      assert.equal("3.500000", tostring(byk[agents[1] .. "/EUR"].quantity))
      assert.equal("100000000000000.999999", tostring(byk[agents[2] .. "/USD"].total))
      assert.is_true(core.is_decimal(byk[agents[2] .. "/USD"].total))
    end)

    it("over a half-open time range, and filtered by agent and currency", function()
      local t = scope(function(s)
        return spending.totals(s, { from = "2024-01-15T12:00:00Z", to = core.Instant("2024-02-01T00:00:00Z") })
      end)
      local got = {}
      for _, r in ipairs(t) do got[#got + 1] = r.agent_id .. " " .. r.currency .. " " .. tostring(r.total) end
      table.sort(got)
      local want = { agents[1] .. " EUR 5.000000", agents[1] .. " USD 0.200000",
                     agents[2] .. " USD 99999999999999.999999" }
      table.sort(want)
      assert.same(want, got)
      t = scope(function(s) return spending.totals(s, { agent_id = agents[1], currency = "USD" }) end)
      assert.equal(1, #t)
      assert.equal("0.300000", tostring(t[1].total))
      local ok, err = pcall(scope, function(s) return spending.totals(s, { from = "yesterday" }) end)
      assert.is_false(ok)
      assert.equal("from must be an Instant or an ISO 8601 string, got yesterday", err.message)
    end)

    it("a snapshot plus the events after it equals a full recomputation", function()
      local snap = scope(function(s) return snapshot.create(s) end)
      -- Later events, after a gap in the ids (rolled-back appends leave gaps).
      sql("SELECT setval('ledger_events_event_id_seq', (SELECT max(event_id) FROM ledger_events) + 50)")
      add_event(agents[1], "2024-03-01T00:00:00Z", "0.05")
      add_event(agents[3], "2024-03-01T00:00:00Z", "12.345678", "GBP")
      local from_snap, info = scope(function(s) return spending.from_snapshot(s, snap.snapshot_id) end)
      local full = scope(function(s) return spending.agent_totals(s) end)
      local a, b = {}, {}
      for k, v in pairs(from_snap) do a[k] = tostring(v) end
      for k, v in pairs(full) do b[k] = tostring(v) end
      assert.same(b, a)
      assert.equal("5.350000", a[agents[1]])
      assert.equal("12.345678", a[agents[3]])
      assert.equal(2, info.later_events)
      assert.equal(snap.snapshot_data.last_event_id, info.last_event_id)
    end)

    it("refuses a snapshot that does not record what it covers; nil for an unknown one", function()
      local id = core.uuid4()
      sql([[INSERT INTO ledger_snapshots (snapshot_id, snapshot_timestamp, total_events, merkle_root, snapshot_data,
                                          created_at)
            VALUES ($1, $2, 5, '', '{"agent_spending": {}, "snapshot_timestamp": "2024-01-01T00:00:00",
                                     "total_events": 5}'::jsonb, $2)]], id, core.utcnow())
      local ok, err = pcall(scope, function(s) return spending.from_snapshot(s, id) end)
      assert.is_false(ok)
      assert.equal("unsupported", err.kind)
      assert.equal("snapshot " .. id .. " does not record last_event_id (it was made by another tool), so the " ..
                   "events after it cannot be told apart: use spending.agent_totals", err.message)
      local ghost = core.uuid4()
      local v, why = scope(function(s) return spending.from_snapshot(s, ghost) end)
      assert.is_nil(v)
      assert.equal("snapshot " .. ghost .. " not found", why)
    end)
  end)
end)
