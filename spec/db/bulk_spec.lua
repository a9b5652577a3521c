-- Bulk inserts: session:bulk_insert (COPY, the constructors' validation
-- first), its streaming twin session:copy_writer, and conn:copy_in.
local core = require "caracal.core"
local models = require "caracal.models"
local ledgerdb = require "ledgerdb"

local Principal, LedgerEvent = models.Principal, models.LedgerEvent

describe("bulk inserts", function()
  local h, m, agent

  setup(function()
    h = ledgerdb.create("bulk_spec")
    m = h.manager
    agent = Principal { name = "bulk-agent", principal_type = "agent", owner = "ops@example.com" }
    m:session_scope(function(s) s:add(agent) end)
  end)
  teardown(function() if h then h.close() end end)

  local function count(tag)
    return m:execute("select count(*) as n from ledger_events where resource_type like $1", tag .. "%")[1].n
  end

  local function rows_of(n, tag, extra)
    local rows = {}
    for i = 1, n do
      rows[i] = { agent_id = agent.principal_id, resource_type = tag, quantity = tostring(i),
                  cost = string.format("0.%06d", i % 1000000) }
      for k, v in pairs(extra or {}) do rows[i][k] = v end
    end
    return rows
  end

  it("round-trips exact decimals, instants, JSON, NULLs and strings with tabs, newlines and backslashes", function()
    local rows = {
      { agent_id = agent.principal_id, resource_type = "rt\ttab\nnewline\\backslash\rcr \\N end",
        quantity = "99999999999999.999999", cost = core.Decimal("0.000001"),
        timestamp = core.Instant("2024-02-29T23:59:59.999999Z"), currency = "EUR",
        event_metadata = { note = "a\tb\nc\\d \"q\" é ✓", list = core.json_array({}), n = 12345678901234,
                           f = 0.1, nested = { core.null, true, { deep = "x" } } } },
      { agent_id = agent.principal_id, resource_type = "rt plain", quantity = "0", cost = "12.5",
        timestamp = "1999-12-31T23:59:59.000001+02:00" }, -- no metadata, no merkle root: NULLs
    }
    m:session_scope(function(s)
      assert.equal(2, s:bulk_insert(LedgerEvent, rows))
    end)
    local got = m:session_scope(function(s)
      return s:query(LedgerEvent, { resource_type = { "like", "rt%" } }, { order_by = "quantity desc" })
    end)
    assert.equal(2, #got)
    local a, b = got[1], got[2]
    assert.equal(rows[1].resource_type, a.resource_type)
    assert.equal("99999999999999.999999", tostring(a.quantity))
    assert.equal("0.000001", tostring(a.cost))
    assert.equal(core.Instant("2024-02-29T23:59:59.999999Z"), a.timestamp)
    assert.equal(1709251199999999, a.timestamp:micros())
    assert.equal("EUR", a.currency)
    assert.equal("a\tb\nc\\d \"q\" é ✓", a.event_metadata.note)
    assert.is_true(core.is_json_array(a.event_metadata.list))
    assert.equal(12345678901234, a.event_metadata.n)
    assert.equal(0.1, a.event_metadata.f)
    assert.equal(core.null, a.event_metadata.nested[1])
    assert.equal("x", a.event_metadata.nested[3].deep)
    assert.equal("12.500000", tostring(b.cost))
    assert.equal(core.Instant("1999-12-31T21:59:59.000001Z"), b.timestamp)
    assert.equal("USD", b.currency) -- the constructor's default
    assert.is_nil(b.event_metadata)
    assert.is_nil(b.merkle_root_id)
    local raw = m:execute("select metadata is null as m, merkle_root_id is null as r from ledger_events " ..
                          "where resource_type = 'rt plain'")[1]
    assert.is_true(raw.m)
    assert.is_true(raw.r)
  end)

  it("rejects a bad row before sending anything: the constructor's error, with the row", function()
    local rows = rows_of(10, "bad-early")
    rows[7].cost = 0.5 -- a float is not exact
    m:session_scope(function(s)
      local ok, err = pcall(s.bulk_insert, s, LedgerEvent, rows)
      assert.is_false(ok)
      assert.equal("validation", err.kind)
      assert.equal(7, err.row)
      assert.equal("LedgerEvent.cost", err.model .. "." .. err.field)
      assert.matches("not exact", err.message, 1, true)
      -- nothing reached the server: the transaction goes on
      assert.equal("in_transaction", s:transaction_state())
      assert.equal(1, s:scalar("select 1"))
    end)
    assert.equal(0, count("bad-early"))
  end)

  it("a bad row found after the COPY started writes nothing and leaves the transaction usable", function()
    local rows = rows_of(3500, "bad-late")
    rows[3200].currency = "usd" -- not three upper-case letters
    m:session_scope(function(s)
      s:execute("select 1")
      local ok, err = pcall(s.bulk_insert, s, LedgerEvent, rows)
      assert.is_false(ok)
      assert.equal("validation", err.kind)
      assert.equal(3200, err.row)
      assert.matches("LedgerEvent.currency", err.message, 1, true)
      assert.equal("in_transaction", s:transaction_state()) -- not "failed"
      assert.equal(0, s:scalar("select count(*) from ledger_events where resource_type = 'bad-late'"))
    end)
    assert.equal(0, count("bad-late"))
  end)

  it("handles 0 rows without a round trip and 50,000 rows in one call", function()
    local s = m:session()
    assert.equal(0, s:bulk_insert(LedgerEvent, {}))
    assert.equal("none", s:transaction_state()) -- nothing was sent, no transaction begun
    s:close()
    local rows = rows_of(50000, "big")
    local n = m:session_scope(function(s) return s:bulk_insert("LedgerEvent", rows) end)
    assert.equal(50000, n)
    local r = m:execute("select count(*) as n, sum(quantity) as q, max(cost) as c from ledger_events " ..
                        "where resource_type = 'big'")[1]
    assert.equal(50000, r.n)
    assert.equal(core.Decimal("1250025000"), r.q) -- 1 + 2 + ... + 50000
    assert.equal("0.050000", tostring(r.c))
  end)

  it("a server error during the COPY writes nothing; the session is usable after rollback", function()
    local rows = rows_of(2500, "fk")
    rows[1800].agent_id = core.uuid4() -- no such principal
    local s = m:session()
    s:execute("select 1")
    local ok, err = pcall(s.bulk_insert, s, LedgerEvent, rows)
    assert.is_false(ok)
    assert.equal("23503", err.sqlstate)
    assert.matches("^ledger_events", err.table) -- a partition of it at revision 3 (ledger_events_YYYY_MM)
    assert.equal("failed", s:transaction_state())
    s:rollback()
    assert.equal(0, s:scalar("select count(*) from ledger_events where resource_type = 'fk'"))
    rows[1800].agent_id = agent.principal_id
    assert.equal(2500, s:bulk_insert(LedgerEvent, rows))
    s:commit()
    s:close()
    assert.equal(2500, count("fk"))
  end)

  it("returning = true gives the objects with their generated keys", function()
    local objs = m:session_scope(function(s)
      return s:bulk_insert(LedgerEvent, rows_of(5, "returning"), { returning = true })
    end)
    assert.equal(5, #objs)
    for i = 2, 5 do assert.is_true(objs[i].event_id > objs[i - 1].event_id) end
    assert.equal("0.000003", tostring(objs[3].cost))
    assert.equal(5, count("returning"))
  end)

  it("writes after what was queued with add, in order", function()
    local p = Principal { name = "bulk-late-agent", principal_type = "agent", owner = "ops@example.com" }
    m:session_scope(function(s)
      s:add(p) -- the events reference it: it must be written first
      assert.equal(3, s:bulk_insert(LedgerEvent, rows_of(3, "after-add", { agent_id = p.principal_id })))
    end)
    assert.equal(3, count("after-add"))
  end)

  describe("copy_writer", function()
    it("streams rows in batches of COPY; close sends the rest and gives the count", function()
      m:session_scope(function(s)
        local w <close> = s:copy_writer(LedgerEvent, { batch = 100 })
        for _, row in ipairs(rows_of(250, "writer")) do w:write(row) end
        assert.equal(200, s:scalar("select count(*) from ledger_events where resource_type = 'writer'"))
        assert.equal(250, w:close())
      end)
      assert.equal(250, count("writer"))
    end)

    it("rejects a bad row without sending it; the writer goes on", function()
      m:session_scope(function(s)
        local w = s:copy_writer(LedgerEvent)
        w:write(rows_of(1, "writer-bad")[1])
        local ok, err = pcall(w.write, w, { agent_id = "not a uuid" })
        assert.is_false(ok)
        assert.equal("validation", err.kind)
        assert.equal(2, err.row)
        w:write(rows_of(1, "writer-bad")[1])
        -- commit sends what an open writer holds
      end)
      assert.equal(2, count("writer-bad"))
    end)

    it("rollback drops the rows a writer holds", function()
      local ok = pcall(m.session_scope, m, function(s)
        local w = s:copy_writer(LedgerEvent)
        for _, row in ipairs(rows_of(10, "writer-rollback")) do w:write(row) end
        error("give up")
      end)
      assert.is_false(ok)
      assert.equal(0, count("writer-rollback"))
    end)
  end)

  describe("conn:copy_in", function()
    it("escapes every special character and writes NULL as \\N", function()
      m:session_scope(function(s)
        s:execute("create temp table copy_t(a text, b int, c jsonb, d numeric(10,2))")
        local values = { "tab\tnl\ncr\rbs\\", "\\N", "", "x\\ty" }
        local rows = {}
        for i, v in ipairs(values) do rows[i] = { a = v, b = i, c = { v = v }, d = core.Decimal("1.5") } end
        rows[#rows + 1] = { b = 99 } -- a, c, d NULL
        local n = s.conn:copy_in("COPY copy_t (a, b, c, d) FROM STDIN", rows,
                                 { keys = { "a", "b", "c", "d" }, types = { 0, 0, 3802, 1700 } })
        assert.equal(5, n)
        local got = s:execute("select a, b, c, d from copy_t order by b")
        for i, v in ipairs(values) do
          assert.equal(v, got[i].a)
          assert.equal(v, got[i].c.v)
          assert.equal(core.Decimal("1.50"), got[i].d)
        end
        assert.is_nil(got[5].a)
        assert.is_nil(got[5].c)
        assert.is_nil(got[5].d)
      end)
    end)

    it("a value that cannot be sent ends the COPY with nothing written and the connection usable", function()
      m:session_scope(function(s)
        s:execute("create temp table copy_u(a text, d numeric)")
        local rows = {}
        for i = 1, 5000 do rows[i] = { tostring(i), tostring(i) } end
        rows[4000][2] = 2.5 -- a float for a NUMERIC, after several chunks were sent
        local ok, err = pcall(s.conn.copy_in, s.conn, "COPY copy_u FROM STDIN", rows, { types = { 0, 1700 } })
        assert.is_false(ok)
        assert.matches("not exact", tostring(err), 1, true)
        assert.equal("failed", s.conn:transaction_status())
        s:rollback()
        assert.equal(1, s:scalar("select 1"))
      end)
    end)

    it("refuses a statement that is not COPY FROM STDIN", function()
      m:session_scope(function(s)
        local ok, err = pcall(s.conn.copy_in, s.conn, "select 1", {})
        assert.is_false(ok)
        assert.matches("not a COPY", tostring(err), 1, true)
        assert.equal(2, s:scalar("select 2"))
      end)
    end)
  end)
end)
