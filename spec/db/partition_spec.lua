-- Revision 0003: the ledgers partitioned by month. A database with 5,000
-- ledger events over five months (and some authority events), batched
-- under Merkle roots at revision 2, is upgraded: every row, the exact sum
-- of cost and every batch survive; queries by agent and month touch one
-- partition; the append-only rules hold on every partition; future
-- partitions are made ahead of time (caracal.partitions and the
-- `caracal partition` task); the downgrade gives back plain tables.
-- (The million-event version is in spec/scale, `make scale`.)
local core = require "caracal.core"
local merkle = require "caracal.merkle"
local migrate = require "caracal.migrate"
local partitions = require "caracal.partitions"
local testdb = require "testdb"

local MIGRATIONS = (os.getenv("CARACAL_ROOT") or ".") .. "/migrations"
local REV2, REV3 = "a7d4e2c91f06", "c3b8f1d27a94"
local MONTHS = { "2024_01", "2024_02", "2024_03", "2024_04", "2024_05" }

describe("partitioned ledgers (revision 0003)", function()
  local d, m, priv, pub, agents, before

  local function one(sql, ...)
    local rows = m:execute(sql, ...)
    return rows[1] and rows[1][rows.columns[1]]
  end
  local function fails(sql, ...)
    local ok, err = pcall(m.execute, m, sql, ...)
    assert(not ok, "expected a failure: " .. sql)
    assert.is_true(core.is_error(err), tostring(err))
    return err
  end
  local function verify()
    return m:session_scope(function(s) return merkle.verify(s, { public_pem = pub }) end)
  end
  local function batch()
    local s <close> = m:session()
    return merkle.batch(s, { signer_private_pem = priv })
  end
  local function totals()
    local r = m:execute([[SELECT (SELECT count(*) FROM ledger_events) AS n, (SELECT sum(cost) FROM ledger_events) AS s,
      (SELECT count(*) FROM authority_ledger_events) AS a, (SELECT max(event_id) FROM ledger_events) AS last]])[1]
    return { n = r.n, s = tostring(r.s), a = r.a, last = r.last }
  end

  setup(function()
    d = testdb.fresh_database("part", { migrate = REV2 })
    m = d.manager
    priv, pub = core.ec_generate()
    agents = {}
    m:session_scope(function(s)
      for i = 1, 4 do
        agents[i] = s:scalar("INSERT INTO principals (name, principal_type, owner) VALUES ($1::text, 'agent', 'o') " ..
          "RETURNING principal_id", "agent-" .. i)
      end
      -- 1,000 events a month from January to May 2024, costs with six decimals.
      s:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost)
        SELECT ($1::uuid[])[1 + g % 4], timestamptz '2024-01-01 00:00:00+00' + (g / 1000) * interval '1 month'
                 + (g % 1000) * interval '40 minutes' + (g % 7) * interval '0.000013 second',
               'api.x', g, (g % 991)::numeric / 997 + 0.000001
          FROM generate_series(0, 4999) g]], core.json_array(agents))
      s:execute([[INSERT INTO authority_ledger_events (event_type, "timestamp", principal_id, decision)
        SELECT 'validated', timestamptz '2024-01-15 00:00:00+00' + g * interval '3 days', ($1::uuid[])[1 + g % 4],
               CASE WHEN g % 2 = 0 THEN 'allowed' ELSE 'denied' END
          FROM generate_series(0, 49) g]], core.json_array(agents))
    end)
    assert.equal(5, #batch())
    -- As caracal.roles.setup leaves them: firing even for replication roles.
    m:execute("ALTER TABLE ledger_events ENABLE ALWAYS TRIGGER ledger_events_append_only")
    m:execute("ALTER TABLE ledger_events ENABLE ALWAYS TRIGGER ledger_events_no_truncate")
    before = totals()
    migrate.upgrade(m, "head", { dir = MIGRATIONS })
  end)

  teardown(function() if d then d.drop() end end)

  it("keeps every row, the exact sum of cost and every Merkle batch", function()
    assert.equal(REV3, migrate.current(m, { dir = MIGRATIONS }).revision)
    assert.same(before, totals())
    assert.equal(5000, before.n)
    local report = verify()
    assert.is_true(report.ok, merkle.format_report(report))
    assert.equal(5, report.batches)
    assert.equal(5000, report.events)
  end)

  it("is partitioned by month on timestamp, with a default partition and the same keys and indexes", function()
    for _, ledger in ipairs({ "ledger_events", "authority_ledger_events" }) do
      assert.equal("p", one("SELECT relkind::text FROM pg_class WHERE oid = $1::text::regclass", ledger))
      assert.equal("RANGE (\"timestamp\")", one("SELECT pg_get_partkeydef($1::text::regclass)", ledger))
      assert.equal("public." .. ledger .. "_event_id_seq",
        one("SELECT pg_get_serial_sequence($1::text, 'event_id')", ledger))
    end
    local names = {}
    local s <close> = m:session()
    for _, p in ipairs(partitions.list(s, { ledgers = "ledger_events", exact = true })) do
      names[#names + 1] = p.partition
      if p.partition:match("2024_0[1-5]$") then assert.equal(1000, p.rows, p.partition) end
    end
    for i, month in ipairs(MONTHS) do assert.equal("ledger_events_" .. month, names[i], table.concat(names, " ")) end
    assert.equal("ledger_events_default", names[#names])
    assert.equal("PRIMARY KEY (event_id, \"timestamp\")",
      one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ledger_events_pkey'"))
    local idx = {}
    for _, r in ipairs(m:execute([[SELECT c.relname::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'ledger_events'::regclass ORDER BY 1]])) do idx[#idx + 1] = r.name end
    assert.same({ "ix_ledger_events_agent_id", "ix_ledger_events_agent_timestamp", "ix_ledger_events_merkle_root_id",
                  "ix_ledger_events_timestamp", "ledger_events_pkey" }, idx)
    assert.equal("FOREIGN KEY (merkle_root_id) REFERENCES merkle_roots(root_id) ON DELETE SET NULL",
      one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ledger_events_merkle_root_id_fkey' " ..
          "AND conrelid = 'ledger_events'::regclass"))
    -- The guards fire as they did: ENABLE ALWAYS on ledger_events (set
    -- before the upgrade) on it and every partition, the default elsewhere.
    local states = {}
    for _, r in ipairs(m:execute([[SELECT coalesce(pg_partition_root(t.tgrelid), t.tgrelid)::regclass::text AS ledger,
        string_agg(DISTINCT t.tgenabled::text, '') AS states, count(*) AS n
        FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgname LIKE '%ledger_events_%' GROUP BY 1]])) do
      states[r.ledger] = r.states
    end
    assert.same({ ledger_events = "A", authority_ledger_events = "O" }, states)
    -- New rows take the next ids of the same sequence and land in their month.
    local row = m:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost)
      VALUES ($1::uuid, '2024-03-09 10:00:00+00', 'api.y', 1, 0.5) RETURNING event_id, tableoid::regclass::text AS part]],
      agents[1])[1]
    assert.equal(before.last + 1, row.event_id)
    assert.equal("ledger_events_2024_03", row.part)
  end)

  it("reads only the month's partition for a query by agent and time range (EXPLAIN)", function()
    local plan = {}
    for _, r in ipairs(m:execute([[EXPLAIN SELECT event_id, cost FROM ledger_events WHERE agent_id = $1::uuid
        AND "timestamp" >= '2024-03-01 00:00:00+00' AND "timestamp" < '2024-04-01 00:00:00+00']], agents[2])) do
      plan[#plan + 1] = r["QUERY PLAN"]
    end
    local text = table.concat(plan, "\n")
    assert.matches("ledger_events_2024_03", text, 1, true)
    for _, other in ipairs({ "2024_01", "2024_02", "2024_04", "2024_05", "default" }) do
      assert.is_nil(text:find("ledger_events_" .. other, 1, true), text)
    end
    -- The same query through a prepared statement prunes at execution.
    local n = m:execute([[SELECT count(*) AS n FROM ledger_events WHERE agent_id = $1::uuid
      AND "timestamp" >= $2::timestamptz AND "timestamp" < $3::timestamptz]], agents[2],
      core.Instant("2024-03-01T00:00:00Z"), core.Instant("2024-04-01T00:00:00Z"))[1].n
    assert.equal(250, n)
  end)

  it("keeps the ledgers append-only on every partition, except the one batching update", function()
    local err = fails("UPDATE ledger_events SET cost = 0 WHERE event_id = 1")
    assert.equal("CA001", err.sqlstate)
    assert.equal("ledger_events is append-only: UPDATE is not allowed (only setting merkle_root_id once)", err.message)
    assert.equal("merkle_root_id is already set", err.detail)
    err = fails("DELETE FROM ledger_events WHERE event_id = 1")
    assert.equal("ledger_events is append-only: DELETE is not allowed", err.message)
    assert.equal("partition ledger_events_2024_01", err.detail)
    assert.equal("ledger_events is append-only: TRUNCATE is not allowed", fails("TRUNCATE ledger_events").message)
    for _, part in ipairs({ "ledger_events_2024_02", "ledger_events_default" }) do
      err = fails("TRUNCATE " .. part)
      assert.equal("CA001", err.sqlstate, part)
      assert.equal("ledger_events is append-only: TRUNCATE is not allowed", err.message)
      assert.equal("partition " .. part, err.detail)
    end
    err = fails("UPDATE ledger_events_2024_02 SET quantity = quantity + 1")
    assert.equal("ledger_events is append-only: UPDATE is not allowed (only setting merkle_root_id once)", err.message)
    assert.equal("authority_ledger_events is append-only: DELETE is not allowed",
      fails("DELETE FROM authority_ledger_events").message)
    assert.equal("CA001", fails("TRUNCATE authority_ledger_events_2024_03").sqlstate)
    -- A referenced root cannot be deleted (ON DELETE SET NULL would unbatch its events).
    local root = one("SELECT merkle_root_id FROM ledger_events WHERE event_id = 1")
    assert.equal("CA001", fails("DELETE FROM merkle_roots WHERE root_id = $1::uuid", root).sqlstate)
    -- Batching new events still works: it sets each NULL merkle_root_id once.
    m:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost)
      SELECT $1::uuid, timestamptz '2024-05-20 00:00:00+00' + g * interval '1 hour', 'api.z', 1, 0.25
        FROM generate_series(1, 30) g]], agents[3])
    local done = batch()
    assert.equal(1, #done)
    local report = verify()
    assert.is_true(report.ok, merkle.format_report(report))
    assert.equal(0, report.unbatched)
    assert.equal(0, one("SELECT count(*) FROM ledger_events WHERE merkle_root_id IS NULL"))
  end)

  it("makes future partitions ahead of time, idempotently, and takes rows over from the default partition", function()
    local made = m:session_scope(function(s) return partitions.create(s, { from = "2031-01", months = 1 }) end)
    assert.equal(4, #made)
    for _, p in ipairs(made) do assert.is_true(p.created, p.partition) end
    assert.same({ "ledger_events_2031_01", "ledger_events_2031_02" }, { made[1].partition, made[2].partition })
    local again = m:session_scope(function(s) return partitions.create(s, { from = "2031-01", months = 1 }) end)
    for _, p in ipairs(again) do assert.is_false(p.created, p.partition) end

    -- A row for a month with no partition yet lands in the default one...
    local row = m:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost)
      VALUES ($1::uuid, '2032-06-15 12:00:00+00', 'api.late', 2, 0.125) RETURNING event_id, tableoid::regclass::text AS part]],
      agents[4])[1]
    assert.equal("ledger_events_default", row.part)
    batch()
    local counts = totals()
    -- ...and moves, unchanged, into the month's partition when it is made.
    made = m:session_scope(function(s)
      return partitions.create(s, { from = core.Instant("2032-06-30T23:59:59Z"), months = 0, ledgers = "ledger_events" })
    end)
    assert.equal(1, #made)
    assert.same({ "ledger_events_2032_06", true, 1 }, { made[1].partition, made[1].created, made[1].moved })
    assert.equal("ledger_events_2032_06",
      one("SELECT tableoid::regclass::text FROM ledger_events WHERE event_id = $1::int8", row.event_id))
    assert.same(counts, totals())
    assert.equal(0, one("SELECT count(*) FROM ledger_events_default"))
    -- The moved row keeps its batch, and the default partition its guard.
    local report = verify()
    assert.is_true(report.ok, merkle.format_report(report))
    assert.equal("A", one([[SELECT tgenabled::text FROM pg_trigger
      WHERE tgrelid = 'ledger_events_default'::regclass AND tgname = 'ledger_events_append_only']]))
    assert.equal("AA", one([[SELECT string_agg(tgenabled::text, '' ORDER BY tgname) FROM pg_trigger
      WHERE tgrelid = 'ledger_events_2031_02'::regclass AND NOT tgisinternal]]))
    assert.equal("CA001", fails("TRUNCATE ledger_events_2032_06").sqlstate)
  end)

  it("lists partitions with their range, rows and size", function()
    local s <close> = m:session()
    local list = partitions.list(s, { exact = true })
    local by = {}
    for _, p in ipairs(list) do by[p.partition] = p end
    local march = by.ledger_events_2024_03
    assert.equal("ledger_events", march.ledger)
    assert.equal(core.Instant("2024-03-01T00:00:00Z"), march.from)
    assert.equal(core.Instant("2024-04-01T00:00:00Z"), march.to)
    assert.equal(one([[SELECT count(*) FROM ledger_events WHERE "timestamp" >= '2024-03-01 00:00:00+00'
      AND "timestamp" < '2024-04-01 00:00:00+00']]), march.rows)
    assert.is_true(march.exact)
    assert.is_true(march.bytes > 8192)
    assert.is_string(march.size)
    assert.is_true(by.authority_ledger_events_default.default)
    assert.is_nil(by.authority_ledger_events_default.from)
    local ok, err = pcall(partitions.create, s, { months = -1 })
    assert.is_false(ok)
    assert.equal("months must be an integer from 0 to 1200, got -1", err.message)
  end)

  it("has a `caracal partition` task", function()
    local q = testdb.shell_quote
    local out, rc = testdb.sh(q(testdb.bin) .. " --url " .. q(d.url) .. " partition create --months 2 --from 2033-01")
    assert.equal(0, rc, out)
    assert.matches("created ledger_events_2033_01\n", out, 1, true)
    assert.matches("6 partitions created, 0 already there", out, 1, true)
    out, rc = testdb.sh(q(testdb.bin) .. " --url " .. q(d.url) .. " partition list --exact --json")
    assert.equal(0, rc, out)
    local list = core.json_decode(out)
    local found
    for _, p in ipairs(list) do
      if p.partition == "ledger_events_2024_02" then found = p end
    end
    assert.same({ 1000, "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z" }, { found.rows, found.from, found.to })
    out, rc = testdb.sh(q(testdb.bin) .. " --url " .. q(d.url) .. " partition create --months x")
    assert.equal(2, rc, out)
    assert.matches("--months must be a non-negative integer", out, 1, true)
  end)

  it("downgrades to plain tables with every row, and upgrades again", function()
    local counts = totals()
    migrate.downgrade(m, REV2, { dir = MIGRATIONS })
    for _, ledger in ipairs({ "ledger_events", "authority_ledger_events" }) do
      assert.equal("r", one("SELECT relkind::text FROM pg_class WHERE oid = $1::text::regclass", ledger))
      assert.equal("PRIMARY KEY (event_id)",
        one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1::text", ledger .. "_pkey"))
    end
    assert.equal(0, one("SELECT count(*) FROM pg_class WHERE relname LIKE 'ledger_events\\_2%' OR relispartition"))
    assert.equal(0, one("SELECT count(*) FROM pg_proc WHERE proname = 'caracal_ledger_partition'"))
    assert.same(counts, totals())
    local report = verify()
    assert.is_true(report.ok, merkle.format_report(report))
    assert.equal("ledger_events is append-only: UPDATE is not allowed (only setting merkle_root_id once)",
      fails("UPDATE ledger_events SET cost = 1").message)
    assert.equal("CA001", fails("TRUNCATE authority_ledger_events").sqlstate)
    migrate.upgrade(m, "head", { dir = MIGRATIONS })
    assert.same(counts, totals())
    assert.is_true(verify().ok)
    -- The partitions reach from the oldest row's month (January 2024) on.
    assert.equal(1, one("SELECT count(*) FROM pg_class WHERE relname = 'ledger_events_2024_01'"))
    assert.equal(1, one("SELECT count(*) FROM pg_class WHERE relname = 'ledger_events_2032_06'"))
  end)
end)
