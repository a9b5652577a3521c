-- Non-blocking mode from Lua: tasks (core.spawn) whose queries yield, and
-- core.poll, the same step a C host runs with caracal_poll. Sessions,
-- scopes, savepoints, models, LISTEN/NOTIFY and pool limits behave as in
-- blocking mode; the difference is only that nothing waits.
local core = require "caracal.core"
local models = require "caracal.models"
local testdb = require "testdb"
local ledgerdb = require "ledgerdb"

-- Poll until no task waits (or fail after `limit` seconds); returns the
-- number of polls.
local function drain(limit)
  local polls, t0 = 0, os.time()
  while core.poll(0.005) > 0 do
    polls = polls + 1
    if os.time() - t0 > (limit or 20) then error("tasks still waiting after " .. (limit or 20) .. " s", 2) end
    core.sleep(0.002)
  end
  return polls
end

describe("non-blocking mode", function()
  local m, errors

  before_each(function()
    m = testdb.manager({ pool_size = 3, max_overflow = 0, pool_timeout = 5 })
    m.pool:prewarm(3)
    m:execute("drop table if exists async_t")
    m:execute("create table async_t(id int primary key, note text)")
    core.set_nonblocking(true)
    errors = {}
    core.on_error(function(err, traceback) errors[#errors + 1] = { err = err, traceback = traceback } end)
  end)

  after_each(function()
    drain()
    core.on_error(nil)
    core.set_nonblocking(false)
    m:close()
  end)

  local function ids()
    local out = {}
    for _, r in ipairs(m:execute("select id from async_t order by id")) do out[#out + 1] = r.id end
    return out
  end

  it("yields a task at its query and resumes it from core.poll with the result", function()
    local result
    local co = core.spawn(function()
      assert.is_true(core.in_task())
      local rows, count, tag = m:execute("select pg_sleep(0.3), $1::int * 2 as n", 21)
      result = { rows[1].n, count, tag }
    end)
    assert.equal("suspended", coroutine.status(co))
    assert.equal(1, core.pending())
    assert.is_nil(result)
    local polls = drain()
    assert.is_true(polls > 1, "polled while the query ran")
    assert.same({ 42, 1, "SELECT 1" }, result)
    assert.equal("dead", coroutine.status(co))
    assert.is_false(core.in_task())
  end)

  it("keeps blocking outside tasks, and everywhere when non-blocking mode is off", function()
    assert.equal(5, m:execute("select 5 as n")[1].n) -- main thread: blocks as before
    local inner
    core.spawn(function()
      -- a coroutine the user made inside a task does not expect our yields
      local gen = coroutine.wrap(function() coroutine.yield(m:execute("select 6 as n")[1].n) end)
      inner = gen()
    end)
    assert.equal(6, inner)
    core.set_nonblocking(false)
    local done
    core.spawn(function() done = m:execute("select 7 as n")[1].n end)
    assert.equal(7, done) -- ran to the end inside spawn
    assert.equal(0, core.pending())
  end)

  it("runs scopes, savepoints and <close> sessions inside tasks as in blocking mode", function()
    core.spawn(function()
      m:session_scope(function(s)
        s:execute("insert into async_t values (1, 'outer')")
        local ok = pcall(s.session_scope, s, function(inner)
          inner:execute("insert into async_t values (2, 'inner')")
          inner:execute("select 1/0")
        end)
        assert.is_false(ok)
        s:session_scope(function(inner) inner:execute("insert into async_t values (3, 'kept')") end)
      end)
      local s <close> = m:session()
      s:execute("insert into async_t values (4, 'closed')")
    end)
    drain()
    assert.same({}, errors)
    assert.same({ 1, 3, 4 }, ids())
    assert.equal(0, m:get_pool_status().checked_out)
  end)

  it("runs twenty tasks at once on a pool of three", function()
    local done = 0
    for i = 1, 20 do
      core.spawn(function()
        m:session_scope(function(s)
          s:execute("select pg_sleep(0.05)")
          s:execute("insert into async_t values ($1, 'task')", i)
        end)
        done = done + 1
      end)
    end
    assert.equal(20, core.pending())
    drain()
    assert.equal(20, done)
    assert.equal(20, #ids())
    local st = m:get_pool_status()
    assert.same({ 0, 3 }, { st.checked_out, st.total })
  end)

  it("reports an uncaught error with its traceback and rolls the scope back", function()
    core.spawn(function()
      m:session_scope(function(s)
        s:execute("insert into async_t values (1, 'doomed')")
        s:execute("insert into async_t values (1, 'duplicate')")
      end)
    end)
    drain()
    assert.equal(1, #errors)
    assert.equal("23505", errors[1].err.sqlstate)
    assert.matches("stack traceback", errors[1].traceback, 1, true)
    assert.matches("async_spec.lua", errors[1].traceback, 1, true)
    assert.same({}, ids())
    assert.equal(0, m:get_pool_status().checked_out)
  end)

  it("raises the usual pool_timeout in a task that waits too long, without blocking", function()
    local small = testdb.manager({ pool_size = 1, max_overflow = 0, pool_timeout = 0.3 })
    small.pool:prewarm(1)
    local kind
    core.spawn(function() small:execute("select pg_sleep(1)") end)
    core.spawn(function()
      local ok, err = pcall(small.execute, small, "select 1")
      kind = not ok and err.kind or "no error"
    end)
    local polls = 0
    while kind == nil and polls < 100000 do
      core.poll(0.001)
      polls = polls + 1
      core.sleep(0.005)
    end
    assert.equal("pool_timeout", kind)
    assert.is_true(polls > 10)
    drain()
    small:close()
  end)

  it("sleeps and yields for a frame without blocking the poll", function()
    local steps = {}
    core.spawn(function()
      steps[#steps + 1] = "start"
      core.sleep(0.05)
      steps[#steps + 1] = "slept"
      coroutine.yield() -- one frame
      steps[#steps + 1] = "next frame"
    end)
    assert.same({ "start" }, steps)
    core.poll()
    assert.same({ "start" }, steps) -- 50 ms have not passed
    drain()
    assert.same({ "start", "slept", "next frame" }, steps)
  end)

  it("refuses a second statement on a connection busy with another task", function()
    local s = m:session()
    local second
    core.spawn(function() s:execute("select pg_sleep(0.2)") end)
    core.spawn(function()
      local ok, err = pcall(s.execute, s, "select 1")
      second = ok and "ran" or tostring(err)
    end)
    drain()
    assert.matches("busy", second, 1, true)
    s:close()
  end)

  it("fails a task cleanly when its connection is released under it", function()
    local s = m:session()
    local outcome
    core.spawn(function()
      local ok, err = pcall(s.execute, s, "select pg_sleep(0.3)")
      outcome = ok and "ran" or tostring(err)
    end)
    s:close() -- from the main thread, while the statement runs
    drain()
    assert.matches("released connection", outcome, 1, true)
    local st = m:get_pool_status()
    assert.same({ 0, 3 }, { st.checked_out, st.checked_in })
    assert.equal(7, m:execute("select 7 as n")[1].n) -- and the connection is fine
  end)

  it("re-prepares cached statements after DDL inside a task", function()
    local before, after
    core.spawn(function()
      local s <close> = m:session()
      before = s:execute("select * from async_t").columns
      s:execute("alter table async_t add column extra int")
      after = s:execute("select * from async_t").columns
    end)
    drain()
    assert.same({ "id", "note" }, before)
    assert.same({ "id", "note", "extra" }, after)
  end)

  it("delivers NOTIFY to core.listen callbacks from core.poll", function()
    local heard, echoes = {}, {}
    core.listen("async spec", function(channel, payload, pid)
      heard[#heard + 1] = { channel, payload, type(pid) }
      -- callbacks are tasks: they may query without blocking
      local echo = m:execute("select $1::text as echo", payload)[1].echo
      echoes[#echoes + 1] = echo -- (#echoes read after the yield, not before)
    end, m.pool)
    m:execute("select pg_notify('async spec', 'first')")
    m:execute("select pg_notify('async spec', 'second')")
    for _ = 1, 200 do
      core.poll()
      if #echoes >= 2 then break end
      core.sleep(0.01)
    end
    drain()
    assert.same({}, errors)
    -- in the order sent; the callbacks' own queries finish in any order
    assert.same({ { "async spec", "first", "number" }, { "async spec", "second", "number" } }, heard)
    table.sort(echoes)
    assert.same({ "first", "second" }, echoes)
    assert.is_true(core.unlisten("async spec"))
    assert.is_false(core.unlisten("async spec"))
  end)

  describe("with models", function()
    local h

    setup(function() h = ledgerdb.create("async_spec") end)
    teardown(function() if h then h.close() end end)

    it("adds, flushes and queries models inside a task", function()
      local found
      core.spawn(function()
        h.manager:session_scope(function(s)
          local agent = models.Principal { name = "async-agent", principal_type = "agent", owner = "ops@example.com" }
          s:add(agent)
          s:add(models.LedgerEvent { agent_id = agent.principal_id, resource_type = "api.test",
                                     quantity = core.Decimal("2"), cost = core.Decimal("0.000125") })
          s:flush()
          found = s:query(models.LedgerEvent, { agent_id = agent.principal_id })
        end)
      end)
      drain()
      assert.same({}, errors)
      assert.equal(1, #found)
      assert.equal(core.Decimal("0.000125"), found[1].cost)
    end)
  end)
end)
