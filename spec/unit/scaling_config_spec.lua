-- The configuration of scaling (README "Scaling"), without a database:
-- replicas and read_url make the read pool's connection, several hosts
-- make the primary's read-write, pooler = "transaction" drops the
-- connection options for SET LOCAL, and the session-state check behind a
-- pooler reads SQL text the way the server would.
local config = require "caracal.config"
local pooler = require "caracal.pooler"

local C = config.DatabaseConfig

describe("scaling settings", function()
  it("asks libpq for the read-write server when the primary lists several hosts", function()
    assert.equal("read-write", C { url = "postgresql://app@db1:5432,db2:5433/caracal" }:conninfo().target_session_attrs)
    assert.is_nil(C { url = "postgresql://app@db1/caracal" }:conninfo().target_session_attrs)
    assert.equal("any", C { host = "a,b", target_session_attrs = "any" }:conninfo().target_session_attrs)
  end)

  it("makes one multi-host read connection from replicas: the standbys first, then the primary's hosts", function()
    local c = C { url = "postgresql://app:s3cret@db1:5432,db2:5433/caracal", pool_size = 3,
                  replicas = { "postgresql://r1:6000", "postgresql://r2" } }
    assert.equal("DatabaseConfig(postgresql://app:***@db1:5432,db2:5433/caracal, pool 3+5, 2 replica URLs)",
      tostring(c))
    local r = c:read_config()
    local ci = r:conninfo()
    assert.same({ "r1,r2,db1,db2", "6000,,5432,5433", "prefer-standby", "caracal", "app", "s3cret", "3" },
      { ci.host, ci.port, ci.target_session_attrs, ci.dbname, ci.user, ci.password, tostring(r.pool_size) })
    assert.is_nil(C { host = "db" }:read_config())
    -- One string: a multi-host replica URL counts its hosts.
    assert.equal("r1,r2,db", C { host = "db", replicas = "postgresql://r1:1,r2:2/caracal" }:read_config().host)
  end)

  it("takes read_url as it is, filling what it leaves out from the primary", function()
    local r = C { host = "db", user = "app", password = "pw", read_url = "postgresql://lb.internal:6432/caracal" }
      :read_config()
    local ci = r:conninfo()
    assert.same({ "lb.internal", "6432", "app", "pw", "prefer-standby" },
      { ci.host, ci.port, ci.user, ci.password, ci.target_session_attrs })
  end)

  it("rejects malformed replica settings with precise messages", function()
    local function msg(t)
      local ok, err = pcall(C, t)
      assert.is_false(ok)
      return err
    end
    assert.equal("DatabaseConfig: replicas must be a URL or a non-empty list of URLs, got number", msg { replicas = 1 })
    assert.equal("DatabaseConfig: replicas must be a URL or a non-empty list of URLs, got table", msg { replicas = {} })
    assert.matches("^DatabaseConfig: replicas%[2%]: invalid connection URL", msg { replicas = { "postgresql://a", "http://b" } })
    assert.matches("^DatabaseConfig: read_url: invalid connection URL", msg { read_url = "nope" })
    local ok, err = pcall(function()
      return C({ replicas = { "postgresql://u1@a/x", "postgresql://u2@b/x" } }):read_config()
    end)
    assert.is_false(ok)
    assert.matches("replicas[2] names another user than replicas[1]", err, 1, true)
  end)

  it("reads ?pooler= from the URL (libpq never sees it) and validates it", function()
    local c = C { url = "postgresql://app@pgb:6432/caracal?sslmode=require&pooler=transaction" }
    assert.equal("transaction", c.pooler)
    assert.is_true(c:transaction_pooler())
    assert.is_nil(c:conninfo().pooler)
    assert.is_nil(c:conninfo().options)
    assert.equal("require", c:conninfo().sslmode)
    assert.equal("postgresql://app@pgb:6432/caracal?sslmode=require&pooler=transaction", c:masked_url())
    local ok, err = pcall(C, { url = "postgresql://app@pgb/caracal?pooler=statement" })
    assert.is_false(ok)
    assert.equal("DatabaseConfig: pooler must be one of 'none', 'session', 'transaction', got \"statement\"", err)
    ok, err = pcall(C, { pooler = "transaction", libpq = { options = "-c work_mem=1MB" } })
    assert.is_false(ok)
    assert.matches("options cannot pass a transaction pooler", err, 1, true)
    ok, err = pcall(C, { pooler = "transaction", reset_on_return = "always" })
    assert.is_false(ok)
    assert.matches("reset_on_return = 'always' resets the session", err, 1, true)
    assert.is_false(C { url = "postgresql://app@db/caracal?pooler=session" }:transaction_pooler())
    assert.matches("-c TimeZone=UTC", C { pooler = "session" }:conninfo().options, 1, true)
  end)

  it("knows which SQL needs a session that a transaction pooler does not keep", function()
    local needs = {
      "SET work_mem = '1MB'", "set session authorization x", "RESET ALL", "LISTEN jobs", "PREPARE p AS SELECT 1",
      "DEALLOCATE ALL", "SELECT pg_advisory_lock(1)", "select pg_try_advisory_lock_shared(1, 2)",
      "select pg_advisory_unlock(1)", "SELECT set_config('a.b', 'c', false)", "CREATE TEMP TABLE t (x int)",
      "create global temporary table t (x int)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "LOAD 'auto_explain'",
      "DISCARD ALL", "select 1; set x.y = 2",
    }
    for _, sql in ipairs(needs) do assert.is_string((pooler.session_need(sql)), sql) end
    local fine = {
      "SET LOCAL work_mem = '1MB'", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET CONSTRAINTS ALL DEFERRED",
      "select pg_advisory_xact_lock(1)", "select pg_try_advisory_xact_lock(1)", "select set_config('a.b', 'c', true)",
      "CREATE TEMP TABLE t (x int) ON COMMIT DROP", "DECLARE c CURSOR FOR SELECT 1", "select 'set x = 1; listen y'",
      "-- SET x = 1\nselect 1", "select $$ pg_advisory_lock(1) $$", "insert into settings (k) values ('reset')",
      "UPDATE t SET x = 1",
    }
    for _, sql in ipairs(fine) do assert.is_nil((pooler.session_need(sql)), sql) end
  end)
end)
