-- Timeouts, deadlocks and serialization failures: each is a clear error
-- with its SQLSTATE, the scope rolls back, the connection is reused when
-- it is still good and discarded when the server closed it; serialization
-- failures and deadlocks are retryable through caracal.retry.
package.path = "spec/reliability/?.lua;" .. package.path
local core = require "caracal.core"
local retry = require "caracal.retry"
local testdb = require "testdb"
local H = require "harness"

-- Poll tasks until none waits (bounded).
local function drain(limit)
  local t0 = H.now()
  while core.poll(0.005) > 0 do
    if H.now() - t0 > (limit or 20) then error("tasks still waiting after " .. (limit or 20) .. " s", 2) end
    core.sleep(0.002)
  end
end

describe("timeouts, deadlocks and serialization failures", function()
  local m

  setup(function()
    m = testdb.manager({ pool_size = 4, max_overflow = 0, pool_timeout = 5,
                         options = "-c deadlock_timeout=100ms" })
    m:execute("drop table if exists tmo_t, ser_t, dl_t, dl_log, def_t")
    m:execute("create table tmo_t(id int primary key)")
    m:execute("create table ser_t(k text, n int)")
    m:execute("create table dl_t(id int primary key, v int)")
    m:execute("create table dl_log(task text)")
    m:execute("create table def_t(id int unique deferrable initially deferred)")
  end)

  teardown(function()
    m:execute("drop table if exists tmo_t, ser_t, dl_t, dl_log, def_t")
    m:close()
  end)

  local function n(tbl) return m:execute("select count(*) as n from " .. tbl)[1].n end

  it("statement_timeout: 57014, the scope rolls back, the connection is reused", function()
    H.check({ id = "T7", fault = "statement_timeout=200ms against pg_sleep(2) in a scope",
              expected = "57014 within ~0.2 s; rolled back; same backend reused",
              observed = function(e) return string.format("57014 after %.2f s; rolled back; reused", e) end,
              rows = 1 }, function()
      local t = testdb.manager({ pool_size = 1, max_overflow = 0, statement_timeout = 200 })
      local pid = t:execute("select pg_backend_pid() as p")[1].p
      local t0 = H.now()
      local ok, err = pcall(t.session_scope, t, function(s)
        s:execute("insert into tmo_t values (1)")
        s:execute("select pg_sleep(2)")
      end)
      local elapsed = H.now() - t0
      assert.is_false(ok)
      assert.equal("57014", err.sqlstate)
      assert.is_false(err.connection_lost)
      assert.is_true(elapsed < 1.5)
      assert.equal(0, n("tmo_t"))
      assert.equal(pid, t:execute("select pg_backend_pid() as p")[1].p)
      assert.equal(0, t:get_pool_status().discards)
      t:close()
      return elapsed
    end)
  end)

  it("lock_timeout: 55P03 while another session holds the lock; the connection is reused", function()
    H.check({ id = "T7", fault = "lock_timeout=300ms on a table another session holds ACCESS EXCLUSIVE",
              expected = "55P03 after ~0.3 s; connection reused",
              observed = function(e) return string.format("55P03 after %.2f s; reused", e) end }, function()
      local t = testdb.manager({ pool_size = 1, max_overflow = 0, lock_timeout = 300 })
      local pid = t:execute("select pg_backend_pid() as p")[1].p
      local holder = m:session()
      holder:execute("lock table tmo_t in access exclusive mode")
      local t0 = H.now()
      local ok, err = pcall(t.execute, t, "select count(*) from tmo_t")
      local elapsed = H.now() - t0
      holder:close()
      assert.is_false(ok)
      assert.equal("55P03", err.sqlstate)
      assert.is_true(elapsed >= 0.25 and elapsed < 2, "took " .. elapsed)
      assert.equal(pid, t:execute("select pg_backend_pid() as p")[1].p)
      t:close()
      return elapsed
    end)
  end)

  it("idle_in_transaction_session_timeout: the server closes the connection; the scope fails; it is discarded", function()
    H.check({ id = "T7", fault = "idle_in_transaction_session_timeout=300ms, then 1 s idle inside a scope",
              expected = "connection_lost error, nothing committed, connection discarded (not reused)",
              observed = "lost (FATAL from server), 0 rows, discarded", rows = 1 }, function()
      local t = testdb.manager({ pool_size = 1, max_overflow = 0, idle_in_transaction_session_timeout = 300 })
      local pid = t:execute("select pg_backend_pid() as p")[1].p
      local ok, err = pcall(t.session_scope, t, function(s)
        s:execute("insert into tmo_t values (2)")
        core.sleep(1)
        s:execute("insert into tmo_t values (3)")
      end)
      assert.is_false(ok)
      assert.is_true(err.connection_lost)
      assert.equal(0, n("tmo_t"))
      assert.equal(1, t:get_pool_status().discards)
      assert.are_not.equal(pid, t:execute("select pg_backend_pid() as p")[1].p)
      t:close()
    end)
  end)

  it("a deferred unique violation at COMMIT: 23505, the connection idle and reused", function()
    H.check({ id = "T4", fault = "COMMIT itself fails (deferred unique constraint)",
              expected = "23505 from the scope; connection idle, not invalidated", observed = "23505; reused" }, function()
      local t = testdb.manager({ pool_size = 1, max_overflow = 0 })
      local pid = t:execute("select pg_backend_pid() as p")[1].p
      local ok, err = pcall(t.session_scope, t, function(s)
        s:execute("insert into def_t values (1), (1)")
      end)
      assert.is_false(ok)
      assert.equal("23505", err.sqlstate)
      assert.is_false(err.retryable)
      assert.equal(0, n("def_t"))
      assert.equal(pid, t:execute("select pg_backend_pid() as p")[1].p)
      assert.equal(0, t:get_pool_status().discards)
      t:close()
    end)
  end)

  -- Two serializable transactions that read what the other writes: one
  -- of them must fail. `competitor` runs the other one to completion in
  -- the middle of the caller's.
  local function competitor()
    m:session_scope(function(o)
      o:execute("set transaction isolation level serializable")
      o:scalar("select count(*) from ser_t where k = 'a'")
      o:execute("insert into ser_t values ('a', 100)")
    end)
  end

  it("serialization failure: 40001, retryable, connection reused", function()
    H.check({ id = "T4", fault = "write skew between two SERIALIZABLE transactions",
              expected = "40001 with retryable=true; rolled back; connection idle and reused",
              observed = "40001 retryable; 1 row (the winner's)", rows = 1 }, function()
      m:execute("truncate ser_t")
      local before = m:get_pool_status().discards
      local ok, err = pcall(m.session_scope, m, function(s)
        s:execute("set transaction isolation level serializable")
        local c = s:scalar("select count(*) from ser_t where k = 'a'")
        competitor()
        s:execute("insert into ser_t values ('a', $1)", c + 1)
      end)
      assert.is_false(ok)
      assert.equal("40001", err.sqlstate)
      assert.is_true(err.retryable)
      assert.equal(1, n("ser_t"))
      assert.equal(before, m:get_pool_status().discards)
    end)
  end)

  it("serialization failure: retried by retry.session_scope, with exact rows", function()
    H.check({ id = "T4/retry", fault = "write skew at SERIALIZABLE, through retry.session_scope",
              expected = "first attempt 40001, second commits; exactly 2 rows",
              observed = "2 attempts; 2 rows", rows = 2 }, function()
      m:execute("truncate ser_t")
      local attempts, retried = 0, {}
      local c = retry.session_scope(m, function(s)
        attempts = attempts + 1
        s:execute("set transaction isolation level serializable")
        local cnt = s:scalar("select count(*) from ser_t where k = 'a'")
        if attempts == 1 then competitor() end
        s:execute("insert into ser_t values ('a', $1)", cnt + 1)
        return cnt
      end, { attempts = 3, backoff = 0.01, on_retry = function(err) retried[#retried + 1] = err.sqlstate end })
      assert.equal(2, attempts)
      assert.same({ "40001" }, retried)
      assert.equal(1, c)
      assert.equal(2, n("ser_t"))
      assert.same({ 2, 100 }, (function()
        local out = {}
        for _, r in ipairs(m:execute("select n from ser_t order by n")) do out[#out + 1] = r.n end
        return out
      end)())
    end)
  end)

  -- Two tasks locking rows 1 and 2 in opposite orders.
  local function deadlock_tasks(scope)
    m:execute("truncate dl_t, dl_log")
    m:execute("insert into dl_t values (1, 0), (2, 0)")
    local results = {}
    core.set_nonblocking(true)
    for _, spec in ipairs({ { "a", 1, 2 }, { "b", 2, 1 } }) do
      core.spawn(function()
        local ok, err = pcall(scope, function(s)
          s:execute("update dl_t set v = v + 1 where id = $1", spec[2])
          core.sleep(0.2)
          s:execute("update dl_t set v = v + 1 where id = $1", spec[3])
          s:execute("insert into dl_log values ($1)", spec[1])
        end)
        results[spec[1]] = { ok = ok, err = err }
      end)
    end
    local ok, err = pcall(drain, 20)
    core.set_nonblocking(false)
    assert(ok, err)
    return results
  end

  it("deadlock: one side gets 40P01 (retryable), the other commits", function()
    H.check({ id = "T4", fault = "two transactions lock two rows in opposite orders",
              expected = "exactly one 40P01 with retryable=true; the other commits; 1 log row",
              observed = "one 40P01, one commit", rows = 1 }, function()
      local r = deadlock_tasks(function(fn) return m:session_scope(fn) end)
      local failed, committed = {}, 0
      for _, v in pairs(r) do
        if v.ok then committed = committed + 1 else failed[#failed + 1] = v.err end
      end
      assert.equal(1, committed)
      assert.equal(1, #failed)
      assert.equal("40P01", failed[1].sqlstate)
      assert.is_true(failed[1].retryable)
      assert.equal(1, n("dl_log"))
      assert.equal(0, m:get_pool_status().checked_out)
    end)
  end)

  it("deadlock: both sides succeed through retry, with exact rows", function()
    H.check({ id = "T4/retry", fault = "the same deadlock through retry.session_scope",
              expected = "both commit; 2 log rows; each row updated twice",
              observed = "both committed; 2 log rows; v = 2, 2", rows = 2 }, function()
      local r = deadlock_tasks(function(fn)
        return retry.session_scope(m, fn, { attempts = 5, backoff = 0.05 })
      end)
      assert.is_true(r.a.ok, tostring(r.a.err))
      assert.is_true(r.b.ok, tostring(r.b.err))
      assert.equal(2, n("dl_log"))
      local vs = {}
      for _, row in ipairs(m:execute("select v from dl_t order by id")) do vs[#vs + 1] = row.v end
      assert.same({ 2, 2 }, vs)
    end)
  end)

  it("retry: only retryable errors, and never once the body left the transaction", function()
    H.check({ id = "retry", fault = "non-retryable errors; a body that commits or sends COMMIT itself",
              expected = "no retry in each case; the error is the original one",
              observed = "one attempt each" }, function()
      local calls = 0
      local ok, err = pcall(retry.session_scope, m, function(s)
        calls = calls + 1
        s:execute("select 1/0")
      end, { attempts = 3, backoff = 0 })
      assert.is_false(ok)
      assert.equal("22012", err.sqlstate)
      assert.equal(1, calls)
      assert.equal(1, err.attempts)
      -- A retryable error after the body committed part of its work itself.
      m:execute("truncate ser_t")
      calls = 0
      ok, err = pcall(retry.session_scope, m, function(s)
        calls = calls + 1
        s:execute("insert into ser_t values ('early', 1)")
        s:commit()
        error(core.Error { sqlstate = "40001", message = "could not serialize (simulated)" })
      end, { attempts = 3, backoff = 0 })
      assert.is_false(ok)
      assert.equal(1, calls)
      assert.equal(1, n("ser_t"))
      -- The same with COMMIT sent as SQL.
      calls = 0
      ok = pcall(retry.session_scope, m, function(s)
        calls = calls + 1
        s:execute_script("insert into ser_t values ('early', 2); commit")
        error(core.Error { sqlstate = "40P01", message = "deadlock (simulated)" })
      end, { attempts = 3, backoff = 0 })
      assert.is_false(ok)
      assert.equal(1, calls)
      -- Retries run out: the last error, with the count.
      calls = 0
      ok, err = pcall(m.session_scope, m, function()
        calls = calls + 1
        error(core.Error { sqlstate = "40001", message = "always" })
      end, { retries = 2, backoff = 0 })
      assert.is_false(ok)
      assert.equal(3, calls)
      assert.equal(3, err.attempts)
      -- The backoff grows and is bounded.
      for k = 2, 10 do
        local d = retry.delay(k, { base = 0.01, factor = 2, max_delay = 0.5 })
        assert.is_true(d >= 0 and d <= 0.5)
      end
    end)
  end)
end)
