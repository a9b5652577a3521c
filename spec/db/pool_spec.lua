-- The pool as Lua sees it: exhaustion, dead backends, a restarted server,
-- health checks and status.
local core = require "caracal.core"
local db = require "caracal.db"
local testdb = require "testdb"

local function kill(pid)
  testdb.sql("select pg_terminate_backend($1)", pid)
  -- wait until the backend is gone
  for _ = 1, 50 do
    local rows = testdb.sql("select count(*) as n from pg_stat_activity where pid = $1", pid)
    if rows[1].n == 0 then return end
    os.execute("sleep 0.05")
  end
end

describe("the pool from Lua", function()
  it("times out a checkout beyond size + overflow, naming each holder's chunk:line", function()
    local m = testdb.manager({ pool_size = 1, max_overflow = 1, pool_timeout = 0.5 })
    local s1, s2, s3 = m:session(), m:session(), m:session()
    local l1 = debug.getinfo(1, "l").currentline + 1
    s1:execute("select 1")
    local l2 = debug.getinfo(1, "l").currentline + 1
    s2:execute("select 1")
    local t0 = os.clock()
    local ok, err = pcall(s3.execute, s3, "select 1")
    assert.is_false(ok)
    assert.equal("pool_timeout", err.kind)
    assert.matches("pool limit of size 1 overflow 1 reached", err.message, 1, true)
    assert.matches("pool_spec.lua:" .. l1, err.message, 1, true)
    assert.matches("pool_spec.lua:" .. l2, err.message, 1, true)
    assert.is_true(os.clock() - t0 < 0.5) -- it waited, not spun
    local st = m:get_pool_status()
    assert.same({ 1, 2, 1, 0, 2 }, { st.size, st.checked_out, st.overflow, st.checked_in, st.total })
    s1:close()
    s2:close()
    st = m:get_pool_status()
    assert.same({ 0, 0, 1, 1 }, { st.checked_out, st.overflow, st.checked_in, st.total })
    m:close()
  end)

  it("reports a backend killed mid-scope as a failure and recovers by itself", function()
    local m = testdb.manager({ pool_size = 2, max_overflow = 0 })
    m:execute("drop table if exists killed_t")
    m:execute("create table killed_t(x int)")
    local ok, err = pcall(m.session_scope, m, function(s)
      s:execute("insert into killed_t values (1)")
      kill(s:scalar("select pg_backend_pid()"))
      s:execute("insert into killed_t values (2)")
    end)
    assert.is_false(ok)
    assert.is_true(err.connection_lost)
    assert.equal("08006", err.sqlstate)
    -- nothing of the scope was committed, and the pool works again
    assert.equal(0, m:execute("select count(*) as n from killed_t")[1].n)
    assert.is_true(m:health_check())
    assert.equal(0, m:get_pool_status().checked_out)
    m:close()
  end)

  it("raises 'rollback required' for statements after the connection was lost", function()
    local m = testdb.manager({ pool_size = 1, max_overflow = 0 })
    local s = m:session()
    kill(s:scalar("select pg_backend_pid()"))
    assert.is_false(pcall(s.execute, s, "select 1"))
    local ok, err = pcall(s.execute, s, "select 1")
    assert.is_false(ok)
    assert.matches("roll back", err.message)
    local cok, cerr = pcall(s.commit, s)
    assert.is_false(cok)
    assert.equal("rolled_back", cerr.outcome)
    s:close()
    assert.equal(1, m:execute("select 1 as one")[1].one)
    m:close()
  end)

  it("recovers from a server restart mid-run without a wrong result", function()
    local m = testdb.manager({ pool_size = 3, max_overflow = 0 })
    m:execute("drop table if exists restart_t")
    m:execute("create table restart_t(x int)")
    local held = m:session()
    held:execute("insert into restart_t values (1)") -- uncommitted across the restart
    for i = 1, 3 do m:execute("select $1::int", i) end -- idle connections in the pool
    testdb.restart("fast")
    local ok, err = pcall(held.commit, held)
    assert.is_false(ok) -- never a silent success
    assert.is_true(err.connection_lost)
    held:close()
    -- idle connections died with the server: the pool notices and replaces
    -- them; at most the first statement after the restart may fail
    local results = {}
    for i = 1, 4 do
      local rok, rows = pcall(m.execute, m, "select $1::int as v", i)
      results[#results + 1] = rok and rows[1].v or false
    end
    assert.equal(4, results[4])
    assert.equal(3, results[3])
    assert.equal(0, m:execute("select count(*) as n from restart_t")[1].n)
    m:close()
  end)

  it("with pool_pre_ping, the first statement after a restart succeeds", function()
    local m = testdb.manager({ pool_size = 2, max_overflow = 0, pool_pre_ping = true })
    m:execute("select 1")
    testdb.restart("fast")
    assert.equal(2, m:execute("select 2 as v")[1].v)
    m:close()
  end)

  it("health_check is true or false and never raises", function()
    local m = testdb.manager()
    assert.is_true(m:health_check())
    m:close()
    assert.is_false(m:health_check())
    local bad = db.initialize_connection_manager({ host = "127.0.0.1", port = 1, connect_timeout = 2,
                                                   password = "hunter2-secret" })
    assert.is_false(bad:health_check())
    local ok, err = pcall(bad.execute, bad, "select 1")
    assert.is_false(ok)
    assert.equal("connect", err.kind)
    assert.is_nil(tostring(err):find("hunter2", 1, true))
    bad:close()
  end)

  it("get_pool_status has the seed's keys and consistent counts", function()
    local m = testdb.manager({ pool_size = 4, max_overflow = 2 })
    local st = m:get_pool_status()
    assert.same({ 4, 0, 0, 0, 0 }, { st.size, st.checked_in, st.checked_out, st.overflow, st.total })
    local s = m:session()
    s:execute("select 1")
    st = m:get_pool_status()
    assert.same({ 0, 1, 1 }, { st.checked_in, st.checked_out, st.total })
    s:close()
    m:close()
    m:close() -- idempotent
    assert.has_error(function() m:session() end)
  end)

  it("returns a connection dropped without close to the pool, rolled back", function()
    local m = testdb.manager({ pool_size = 1, max_overflow = 0, pool_timeout = 1 })
    m:execute("drop table if exists gc_t")
    m:execute("create table gc_t(x int)")
    do
      local s = m:session()
      s:execute("insert into gc_t values (1)")
      s = nil -- luacheck: ignore
    end
    collectgarbage()
    collectgarbage()
    -- the next checkout resets the parked connection before handing it out
    assert.equal(0, m:execute("select count(*) as n from gc_t")[1].n)
    assert.equal(0, m:get_pool_status().checked_out)
    m:close()
  end)

  it("shares one pool handle between managers in one state", function()
    local m = testdb.manager({ pool_size = 1 })
    local handle = m.pool
    assert.equal("caracal.Pool (size 1, overflow 0/5, checked out 0)", tostring(handle))
    assert.is_true(core.is_error(core.Error { message = "x" }))
    m:close()
  end)
end)
