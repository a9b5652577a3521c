-- Revision 0003 on a million ledger events: a database at revision 2 with
-- 1,000,000 events over two years (made in SQL), all batched under Merkle
-- roots, is upgraded to the partitioned ledgers. Every event is kept (the
-- count and the exact sum of cost), `merkle verify` passes afterwards, and
-- a query by agent and month reads one partition.
package.path = "spec/scale/?.lua;" .. package.path
local core = require "caracal.core"
local merkle = require "caracal.merkle"
local migrate = require "caracal.migrate"
local testdb = require "testdb"

local MIGRATIONS = (os.getenv("CARACAL_ROOT") or ".") .. "/migrations"
local REV2 = "a7d4e2c91f06"
local N = 1000000

local function seconds_since(t0) return string.format("%.1f", core.utcnow() - t0) end

describe("partitioning a million ledger events", function()
  local d

  teardown(function() if d then d.drop() end end)

  it("keeps them all (count and exact sum of cost), and merkle verify still passes", function()
    d = testdb.fresh_database("million", { migrate = REV2, pool_size = 2, max_overflow = 0 })
    local m = d.manager
    local priv, pub = core.ec_generate()
    local t0 = core.utcnow()
    m:session_scope(function(s)
      s:execute("insert into principals (name, principal_type, owner) " ..
                "select 'agent-' || g, 'agent', 'ops@example.com' from generate_series(1, 10) g")
      -- Two years of events, 1 to 997 thousandths each (exact decimals).
      s:execute([[insert into ledger_events (agent_id, "timestamp", resource_type, quantity, cost)
        select (array(select principal_id from principals order by name))[1 + g % 10],
               timestamptz '2024-01-01 00:00:00+00' + interval '1 second' * (g::float8 * 63072000 / $1::int),
               'api.openai.gpt4', (g % 1000)::numeric, ((g % 997) + 1)::numeric / 1000
          from generate_series(0, $1::int - 1) g]], N)
      s:execute([[insert into authority_ledger_events (event_type, "timestamp", principal_id, decision)
        select 'validated', timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
               (array(select principal_id from principals order by name))[1 + g % 10], 'allowed'
          from generate_series(0, 9999) g]])
    end)
    print("# million: generated " .. N .. " events in " .. seconds_since(t0) .. " s")
    local function totals()
      return m:session_scope(function(s)
        local r = s:first("select count(*) as n, sum(cost) as s, (select count(*) from authority_ledger_events) as a " ..
                          "from ledger_events")
        return { r.n, tostring(r.s), r.a }
      end)
    end
    local before = totals()
    assert.equal(N, before[1])
    assert.equal("498995.554000", before[2]) -- sum over g of ((g % 997) + 1) / 1000

    t0 = core.utcnow()
    local batches
    do
      local s <close> = m:session()
      batches = merkle.batch(s, { signer_private_pem = priv, batch_size = 100000 })
    end
    assert.equal(10, #batches)
    print("# million: batched under " .. #batches .. " Merkle roots in " .. seconds_since(t0) .. " s")

    t0 = core.utcnow()
    local res = migrate.upgrade(m, "head", { dir = MIGRATIONS })
    assert.equal(1, #res.applied)
    print("# million: revision 0003 applied in " .. seconds_since(t0) .. " s")

    assert.same(before, totals())
    t0 = core.utcnow()
    local report = m:session_scope(function(s) return merkle.verify(s, { public_pem = pub }) end)
    print("# million: verified in " .. seconds_since(t0) .. " s")
    assert.is_true(report.ok, merkle.format_report(report))
    assert.same({ 10, N, 0 }, { report.batches, report.events, report.unbatched })

    -- One partition a month, none of the rows in the default partition.
    local parts = m:execute([[select count(*) filter (where c.relname ~ '^ledger_events_20') as monthly,
        (select count(*) from ledger_events_default) as in_default
      from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = 'ledger_events'::regclass]])[1]
    assert.is_true(parts.monthly >= 24)
    assert.equal(0, parts.in_default)
    local agent = m:execute("select principal_id from principals where name = 'agent-3'")[1].principal_id
    local plan = {}
    for _, r in ipairs(m:execute([[explain select sum(cost) from ledger_events where agent_id = $1::uuid
        and "timestamp" >= '2025-06-01 00:00:00+00' and "timestamp" < '2025-07-01 00:00:00+00']], agent)) do
      plan[#plan + 1] = r["QUERY PLAN"]
    end
    local text = table.concat(plan, "\n")
    local scanned = {}
    for p in text:gmatch("ledger_events_(%d%d%d%d_%d%d)") do scanned[p] = true end
    assert.same({ ["2025_06"] = true }, scanned, text)
    assert.is_nil(text:find("ledger_events_default", 1, true), text)
  end)
end)
