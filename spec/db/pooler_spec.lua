-- pooler = "transaction": what Caracal does behind PgBouncer in transaction
-- mode, checked against the server directly (the same code paths; the
-- real PgBouncer runs in spec/scale, `make scale`). No statement is
-- prepared by name, the server settings travel as SET LOCAL in each
-- transaction, session state is refused before it is sent, and the
-- migration lock is a lease row.
local core = require "caracal.core"
local config = require "caracal.config"
local migrate = require "caracal.migrate"
local testdb = require "testdb"

local MIGRATIONS = (os.getenv("CARACAL_ROOT") or ".") .. "/migrations"

describe("pooler = 'transaction'", function()
  local d, m

  setup(function()
    d = testdb.fresh_database("pooler")
    m = require("caracal.db").create_connection_manager({ url = d.url .. "?pooler=transaction", pool_size = 2 })
  end)
  teardown(function()
    m:close()
    d.drop()
  end)

  it("is read from the URL, sends no connection options and opens each transaction with SET LOCAL", function()
    local cfg = config.DatabaseConfig { url = d.url .. "?pooler=transaction&sslmode=disable", lock_timeout = 100 }
    assert.equal("transaction", cfg.pooler)
    assert.is_nil(cfg:conninfo().options)
    assert.equal("disable", cfg:conninfo().sslmode)
    assert.matches("?sslmode=disable&pooler=transaction", cfg:masked_url(), 1, true)
    assert.equal("BEGIN; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL TimeZone = 'UTC'; " ..
      "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = '3'; SET LOCAL lock_timeout = '100'",
      cfg:begin_sql(false))
    assert.equal("BEGIN READ ONLY", config.DatabaseConfig { url = d.url }:begin_sql(true))
    local ok, err = pcall(config.DatabaseConfig, { url = d.url .. "?pooler=transaction", options = "-c work_mem=1MB" })
    assert.is_false(ok)
    assert.matches("options cannot pass a transaction pooler", err, 1, true)

    local t = require("caracal.db").create_connection_manager({ url = d.url .. "?pooler=transaction",
      pool_size = 1, statement_timeout = 300 })
    local s <close> = t:session()
    s:execute("set local timezone = 'America/New_York'") -- only this transaction
    assert.equal("America/New_York", s:scalar("show timezone"))
    s:commit()
    assert.same({ "UTC", "ISO, YMD", "300ms" },
      { s:scalar("show timezone"), s:scalar("show datestyle"), s:scalar("show statement_timeout") })
    assert.equal("57014", select(2, pcall(s.execute, s, "select pg_sleep(2)")).sqlstate)
    s:rollback()
    s:close()
    t:close()
  end)

  it("prepares every statement unnamed, and still returns typed results", function()
    local s <close> = m:session()
    for i = 1, 3 do
      local r = s:first("select $1::int8 + 1 as n, $2::numeric as d, now() as t, $3::jsonb as j", i, "1.50",
        { a = { 1, 2 } })
      assert.equal(i + 1, r.n)
      assert.equal("1.50", tostring(r.d))
      assert.is_true(core.is_instant(r.t))
      assert.same({ 1, 2 }, { r.j.a[1], r.j.a[2] })
    end
    -- Large array parameters (the failover spec sends thousands of ids).
    local ids, words = {}, {}
    for i = 1, 5000 do ids[i] = i * 7 end
    for i = 1, 300 do words[i] = ('say "%d" \\ then'):format(i) end
    assert.same({ 5000, 87517500, 300, 'say "300" \\ then' }, { s:scalar("select cardinality($1::int8[])", ids),
      s:scalar("select sum(x)::int8 from unnest($1::int8[]) x", ids), s:scalar("select cardinality($1::text[])", words),
      s:scalar("select ($1::text[])[300]", words) })
    assert.is_true(s:connection():is_pooled())
    assert.equal(0, s:scalar("select count(*) from pg_prepared_statements"))
    -- Without a pooler the same statements are prepared once, by name.
    local direct = testdb.manager({ pool_size = 1 })
    local n = direct:session_scope(function(x)
      x:execute("select $1::int8 + 1 as n", 1)
      return x:scalar("select count(*) from pg_prepared_statements")
    end)
    direct:close()
    assert.is_true(n >= 1)
  end)

  it("runs a task's queries unnamed in non-blocking mode too", function()
    core.set_nonblocking(true)
    local result, failure
    core.on_error(function(e) failure = e end)
    core.spawn(function()
      result = m:session_scope(function(s)
        return s:scalar("select $1::int * 3 + (select count(*) from pg_prepared_statements) as v", 14)
      end)
    end)
    local t0 = os.time()
    while core.poll(0.005) > 0 and os.time() - t0 < 10 do core.sleep(0.002) end
    core.on_error(nil)
    core.set_nonblocking(false)
    assert.is_nil(failure)
    assert.equal(42, result)
  end)

  it("refuses session state before sending it (0A000, kind pooler), and allows its transaction-scoped forms", function()
    local refused = {
      { "set work_mem = '8MB'", "SET without LOCAL" },
      { "SET SESSION statement_timeout = 5", "SET without LOCAL" },
      { "reset work_mem", "RESET" },
      { "listen ch", "LISTEN" },
      { "prepare p as select 1", "named prepared statement" },
      { "select pg_advisory_lock(42)", "pg_advisory_lock takes or releases a session-level advisory lock" },
      { "select pg_try_advisory_lock(42) as ok", "session-level advisory lock" },
      { "select set_config('work_mem', '8MB', false)", "set_config(..., false)" },
      { "create temp table tt (x int)", "temporary table" },
      { "declare c cursor with hold for select 1", "WITH HOLD" },
      { "select 1; set search_path = x", "SET without LOCAL" },
    }
    for _, c in ipairs(refused) do
      local s <close> = m:session()
      local ok, err = pcall(s.execute_script, s, c[1])
      assert.is_false(ok, c[1])
      assert.equal("pooler", err.kind, c[1])
      assert.equal("0A000", err.sqlstate)
      assert.matches(c[2], err.message, 1, true)
      assert.matches("which a transaction pooler (pooler = 'transaction') does not keep", err.message, 1, true)
      assert.equal("none", s:transaction_state(), c[1]) -- nothing was sent
    end
    local s <close> = m:session()
    local ok, err = pcall(s.execute, s, "select pg_advisory_unlock_all()")
    assert.is_false(ok)
    assert.equal("use pg_advisory_xact_lock or pg_try_advisory_xact_lock (released at the end of the transaction)",
      err.hint)
    s:execute("set local work_mem = '8MB'")
    s:execute("select set_config('application_name', 'x', true)")
    assert.is_true(s:scalar("select pg_try_advisory_xact_lock(42)"))
    s:execute("create temp table tt (x int) on commit drop")
    s:execute("-- SET work_mem = 1 is only a comment\nselect 'set work_mem = 1' as s")
    s:commit()
  end)

  it("takes the migration lock as a lease: serialised, named when busy, taken over when expired", function()
    local res = migrate.upgrade(m, "head", { dir = MIGRATIONS })
    assert.equal(3, #res.applied)
    assert.equal(0, d.manager:execute("select count(*) as n from caracal_migration_lock")[1].n) -- released
    assert.equal(0, d.manager:execute("select count(*) as n from pg_locks where locktype = 'advisory'")[1].n)

    -- Another runner's live lease: wait, then fail naming it.
    d.manager:execute([[insert into caracal_migration_lock (id, token, holder, note, acquired_at, renewed_at,
      expires_at) values (1, gen_random_uuid(), 'caracal db upgrade (ops@host-b)', 'applying 0009 abc',
      now(), now(), now() + interval '1 hour')]])
    local waited
    local ok, err = pcall(migrate.downgrade, m, "-1", { dir = MIGRATIONS, lock_timeout = 0.4,
      progress = function(ev) if ev.event == "lock_wait" then waited = ev.text end end })
    assert.is_false(ok)
    assert.equal("locked", err.kind)
    assert.matches("could not get the migration lock within 0.4 s: it is held by caracal db upgrade " ..
      "(ops@host-b) (lease taken at ", err.message, 1, true)
    assert.matches("doing: applying 0009 abc)", err.message, 1, true)
    assert.matches("doing: applying 0009 abc", waited, 1, true)
    assert.matches("the lease of a runner that died expires 300 s after its last renewal", err.hint, 1, true)

    -- The same lease, expired: a runner that died. It is taken over.
    d.manager:execute("update caracal_migration_lock set expires_at = now() - interval '1 second'")
    res = migrate.downgrade(m, "-1", { dir = MIGRATIONS, lock_timeout = 2 })
    assert.equal(1, #res.reverted)
    assert.equal(0, d.manager:execute("select count(*) as n from caracal_migration_lock")[1].n)

    -- A lease taken over while we run: stop before the next revision.
    migrate.downgrade(m, "base", { dir = MIGRATIONS, destructive = true })
    ok, err = pcall(migrate.upgrade, m, "head", { dir = MIGRATIONS, progress = function(ev)
      if ev.event == "done" and ev.index == 1 then
        d.manager:execute("update caracal_migration_lock set token = gen_random_uuid()")
      end
    end })
    assert.is_false(ok)
    assert.equal("lock_lost", err.kind)
    assert.matches("stopping before applying 0002", err.message, 1, true)
    assert.equal("5f3c8a1e9b20", migrate.current(m, { dir = MIGRATIONS }).revision)
  end)
end)
