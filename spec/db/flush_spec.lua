-- The session's flush: queued objects written in order (runs of one model as
-- one pipelined INSERT ... RETURNING *), generated keys and normalised
-- values set on the objects, and nothing written when any of it fails.
local core = require "caracal.core"
local models = require "caracal.models"
local ledgerdb = require "ledgerdb"

local Principal, LedgerEvent = models.Principal, models.LedgerEvent
local AuthorityLedgerEvent, AuditLog = models.AuthorityLedgerEvent, models.AuditLog

describe("session flush", function()
  local h, m

  setup(function()
    h = ledgerdb.create("flush_spec")
    m = h.manager
  end)
  teardown(function() if h then h.close() end end)

  local serial = 0
  local function principal()
    serial = serial + 1
    return Principal { name = "flush-agent-" .. serial, principal_type = "agent", owner = "ops@example.com" }
  end

  local function event(agent, cost, extra)
    local fields = { agent_id = agent.principal_id, resource_type = "api.flush", quantity = "1", cost = cost }
    for k, v in pairs(extra or {}) do fields[k] = v end
    return LedgerEvent(fields)
  end

  local function count(sql, ...)
    return m:execute(sql, ...)[1].n
  end

  it("writes mixed models in order, sets generated keys and normalised values on every object", function()
    local p1, p2 = principal(), principal()
    local queue = { p1, p2 }
    local events = {}
    -- runs of one model (pipelined) between single objects of others
    for i = 1, 5 do
      local e = event(i % 2 == 0 and p2 or p1, "0." .. i, { event_metadata = { n = i, tags = core.json_array({ "a" }) } })
      events[#events + 1] = e
      queue[#queue + 1] = e
    end
    local authority = AuthorityLedgerEvent { event_type = "issued", principal_id = p1.principal_id, decision = "allowed" }
    queue[#queue + 1] = authority
    local e6 = event(p2, "7")
    events[#events + 1] = e6
    queue[#queue + 1] = e6
    local audits = {}
    for i = 1, 3 do
      audits[i] = AuditLog { event_id = "audit-" .. i, event_type = "test", topic = "flush", partition = 0,
                             offset = i, event_timestamp = core.Instant("2024-01-01T00:00:00Z"),
                             event_data = { i = i } }
      queue[#queue + 1] = audits[i]
    end
    for i = 7, 9 do
      local e = event(p1, "1.25")
      events[#events + 1] = e
      queue[#queue + 1] = e
    end

    m:session_scope(function(s)
      s:add_all(queue)
      assert.equal(#queue, #s.pending)
      s:flush()
      assert.equal(0, #s.pending)
    end)

    -- keys set on every object, increasing in the order they were added
    for i = 2, #events do
      assert.is_true(math.type(events[i].event_id) == "integer")
      assert.is_true(events[i].event_id > events[i - 1].event_id, "event " .. i .. " after " .. (i - 1))
    end
    assert.is_true(math.type(authority.event_id) == "integer")
    for i = 2, 3 do assert.is_true(audits[i].log_id > audits[i - 1].log_id) end
    -- the values the server stored, normalised (NUMERIC(20,6): scale 6)
    assert.equal("0.100000", tostring(events[1].cost))
    assert.equal("7.000000", tostring(e6.cost))
    assert.equal("1.000000", tostring(events[9].quantity))
    assert.same({ n = 2, tags = { "a" } }, core.json_decode(core.json_encode(events[2].event_metadata)))
    assert.is_true(core.is_json_array(events[2].event_metadata.tags))
    -- and they are what the rows hold, in the same order
    local rows = m:execute("select event_id, agent_id, cost from ledger_events where resource_type = 'api.flush' " ..
                           "order by event_id")
    assert.equal(#events, #rows)
    for i, e in ipairs(events) do
      assert.equal(e.event_id, rows[i].event_id)
      assert.equal(e.agent_id, rows[i].agent_id)
      assert.equal(e.cost, rows[i].cost)
    end
    assert.equal(3, count("select count(*) as n from audit_logs where topic = 'flush'"))
  end)

  it("pipelines a long run of one model: 500 events, each with its own key", function()
    local p = principal()
    local events = {}
    m:session_scope(function(s)
      s:add(p)
      for i = 1, 500 do
        events[i] = event(p, string.format("0.%06d", i))
        s:add(events[i])
      end
    end) -- flushed by the commit
    local ids = {}
    for i, e in ipairs(events) do
      ids[e.event_id] = true
      assert.equal(string.format("0.%06d", i), tostring(e.cost))
    end
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.equal(500, n)
    local rows = m:execute("select event_id, cost from ledger_events where agent_id = $1 order by event_id",
                           p.principal_id)
    assert.equal(500, #rows)
    for i = 1, 500 do assert.equal(events[i].event_id, rows[i].event_id) end
  end)

  it("a failing object in the middle writes nothing and leaves the queue intact (savepoint)", function()
    local p = principal()
    local ghost = { principal_id = core.uuid4() } -- no such principal: a foreign key violation
    m:session_scope(function(s)
      s:add(p)
      local queue = { event(p, "1"), event(p, "2"), event(ghost, "3"), event(p, "4"), event(p, "5") }
      s:add_all(queue)
      local ok, err = pcall(s.flush, s)
      assert.is_false(ok)
      assert.equal("23503", err.sqlstate)
      -- the queue is as it was, in order
      assert.equal(6, #s.pending)
      assert.is_true(rawequal(p, s.pending[1]))
      for i = 1, 5 do assert.is_true(rawequal(queue[i], s.pending[i + 1])) end
      for i = 1, 5 do assert.is_nil(queue[i].event_id) end
      -- nothing was written, and the transaction is still usable (asked on
      -- the connection: a session statement would flush the queue first)
      assert.equal(0, s.conn:execute("select count(*) as n from principals where principal_id = $1",
                                     p.principal_id)[1].n)
      -- fix the bad object: the same queue now flushes
      queue[3].agent_id = p.principal_id
      s:flush()
      assert.equal(0, #s.pending)
      assert.is_true(queue[5].event_id > queue[1].event_id)
    end)
    assert.equal(5, count("select count(*) as n from ledger_events where agent_id = $1", p.principal_id))
  end)

  it("a failing flush at commit writes nothing: the transaction cannot commit, the queue is kept", function()
    local p = principal()
    local ghost = { principal_id = core.uuid4() }
    local s = m:session()
    s:execute("select 1") -- a transaction is open: commit's flush runs without a savepoint
    s:add(p)
    s:add_all({ event(p, "1"), event(ghost, "2"), event(p, "3") })
    local ok, err = pcall(s.commit, s)
    assert.is_false(ok)
    assert.equal("23503", err.sqlstate)
    assert.equal(4, #s.pending)
    -- committing again cannot keep any of it
    ok, err = pcall(s.commit, s)
    assert.is_false(ok)
    assert.equal("25P02", err.sqlstate)
    s:rollback()
    assert.equal(0, #s.pending)
    s:close()
    assert.equal(0, count("select count(*) as n from principals where principal_id = $1", p.principal_id))
  end)

  it("a validation failure at flush sends nothing", function()
    local p = principal()
    local e = event(p, "1")
    m:session_scope(function(s)
      s:add(p)
      s:add(e)
      e.cost = 0.5 -- changed after add: a float is not exact
      local ok, err = pcall(s.flush, s)
      assert.is_false(ok)
      assert.equal("validation", err.kind)
      assert.matches("LedgerEvent.cost", err.message, 1, true)
      assert.equal(2, #s.pending)
      s.pending = {}
    end)
    assert.equal(0, count("select count(*) as n from principals where principal_id = $1", p.principal_id))
  end)

  it("a flush inside a nested scope is rolled back by the outer scope", function()
    local p = principal()
    local e = event(p, "2.5")
    local ok = pcall(m.session_scope, m, function(s)
      s:session_scope(function(inner)
        inner:add(p)
        inner:add(e)
        inner:flush()
        assert.is_true(math.type(e.event_id) == "integer")
      end)
      assert.equal(1, s:scalar("select count(*) from ledger_events where agent_id = $1", p.principal_id))
      error("the outer scope fails")
    end)
    assert.is_false(ok)
    assert.equal(0, count("select count(*) as n from ledger_events where agent_id = $1", p.principal_id))
    assert.equal(0, count("select count(*) as n from principals where principal_id = $1", p.principal_id))
  end)

  it("with no transaction open, commit writes one object in its own implicit transaction", function()
    local p = principal()
    local s = m:session()
    s:add(p)
    s:commit()
    assert.equal("none", s:transaction_state())
    s:add(event(p, "1"))
    s:add(event(p, "2"))
    s:commit()
    s:close()
    assert.equal(2, count("select count(*) as n from ledger_events where agent_id = $1", p.principal_id))
  end)

  it("a read-only session refuses the write", function()
    local p = principal()
    local s = m:session({ readonly = true })
    s:add(p)
    local ok, err = pcall(s.commit, s)
    assert.is_false(ok)
    assert.equal("25006", err.sqlstate)
    s:rollback()
    s:close()
    assert.equal(0, count("select count(*) as n from principals where principal_id = $1", p.principal_id))
  end)

  describe("conn:execute_pipeline", function()
    it("returns each statement's rows in order, and fails the whole batch on a bad value", function()
      m:session_scope(function(s)
        local conn = s:connection()
        s:begin()
        local params = {}
        for i = 1, 300 do params[i] = { i, core.Decimal(i .. ".5"), n = 2 } end
        local results, affected = conn:execute_pipeline("select $1::int as i, $2::numeric * 2 as d", params)
        assert.equal(300, #results)
        assert.equal(300, affected)
        assert.equal(300, results[300][1].i)
        assert.equal(core.Decimal("601.0"), results[300][1].d)
        assert.same({ "i", "d" }, results[1].columns)
      end)
      m:session_scope(function(s)
        s:execute("create temp table pipe_t(id int primary key, d numeric(20,6))")
        local conn = s.conn
        local params = {}
        for i = 1, 200 do params[i] = { i, tostring(i) } end
        params[150][2] = 1.5 -- a float for a NUMERIC: refused while the batch is on the wire
        local ok, err = pcall(conn.execute_pipeline, conn, "insert into pipe_t values ($1, $2)", params)
        assert.is_false(ok)
        assert.matches("not exact", tostring(err), 1, true)
        -- the batch was failed on the server: the transaction cannot go on
        assert.equal("failed", conn:transaction_status())
        s:rollback()
        assert.equal("idle", conn:transaction_status())
        assert.equal(1, s:scalar("select 1"))
      end)
    end)

    it("inside a task, yields at each statement and gives the same results", function()
      local p = principal()
      m:session_scope(function(s) s:add(p) end)
      local events = {}
      for i = 1, 20 do events[i] = event(p, "0.01") end
      local errors = {}
      core.set_nonblocking(true)
      core.on_error(function(err) errors[#errors + 1] = err end)
      core.spawn(function()
        m:session_scope(function(s) s:add_all(events) end)
      end)
      local t0 = os.time()
      while core.poll(0.005) > 0 and os.time() - t0 < 20 do core.sleep(0.001) end
      core.on_error(nil)
      core.set_nonblocking(false)
      assert.same({}, errors)
      for i = 2, 20 do assert.is_true(events[i].event_id > events[i - 1].event_id) end
      assert.equal(20, count("select count(*) as n from ledger_events where agent_id = $1", p.principal_id))
    end)
  end)
end)
