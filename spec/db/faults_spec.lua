-- Faults on a real server, the fast set (`make check`): a connection lost
-- during COMMIT, a crash and a restart with work in flight, a backend
-- killed mid-query, a connect that hangs or is refused, every connection
-- reset at once. Each case states what must hold: no acknowledged write
-- lost, nothing unacknowledged reported as committed (an unknown outcome
-- reported as unknown), and the pool recovering by itself.
-- The long set (many threads, blackholes, a full disk) is spec/reliability.
package.path = "spec/reliability/?.lua;" .. package.path
local db = require "caracal.db"
local retry = require "caracal.retry"
local testdb = require "testdb"
local H = require "harness"

-- A manager that reaches the test cluster through the proxy.
local function via(proxy, extra)
  local cfg = { host = "127.0.0.1", port = proxy.port, user = "caracal", database = "caracal",
                pool_size = 2, max_overflow = 0, pool_timeout = 5, connect_timeout = 3 }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return db.create_connection_manager(cfg)
end

local function count(m, tbl, where)
  return m:execute("select count(*) as n from " .. tbl .. (where and (" where " .. where) or ""))[1].n
end

-- Wait until the server has finished with a cut connection (its COMMIT
-- runs to the end even though nobody reads the reply).
local function settle(m, tbl, want, where)
  for _ = 1, 100 do
    if count(m, tbl, where) == want then return true end
    H.sleep(0.02)
  end
  return false
end

describe("faults", function()
  local proxy, direct

  setup(function()
    proxy = H.proxy(testdb.port)
    direct = testdb.manager({ pool_size = 2, max_overflow = 0, pool_pre_ping = true })
    direct:execute("drop table if exists fault_t")
    direct:execute("create table fault_t(id int primary key, note text)")
  end)

  teardown(function()
    if proxy then proxy:stop() end
    direct:close()
  end)

  before_each(function()
    proxy:set("pass")
    direct:execute("truncate fault_t")
  end)

  it("reports a connection lost right after COMMIT was sent as outcome unknown (it did commit)", function()
    H.check({ id = "T5", fault = "connection cut after COMMIT reached the server, before the reply",
              expected = "error with outcome=unknown; the row committed exactly once; pool recovers",
              observed = function(err) return "outcome=" .. tostring(err.outcome) .. ", committed 1 row once, pool ok" end,
              rows = 1 }, function()
      local m = via(proxy)
      local t0 = proxy:status().triggered
      proxy:set("drop_commit")
      local ok, err = pcall(m.session_scope, m, function(s)
        s:execute("insert into fault_t values (1, 'cut after commit')")
      end)
      assert.is_false(ok)
      assert.equal("unknown", err.outcome)
      assert.is_true(err.connection_lost)
      assert.matches("may or may not have been committed", tostring(err), 1, true)
      assert.equal(t0 + 1, proxy:status().triggered)
      -- The server got the COMMIT: the row is there, once.
      assert.is_true(settle(direct, "fault_t", 1))
      -- The pool threw the dead connection away and works again.
      assert.equal(0, m:get_pool_status().checked_out)
      assert.equal(7, m:execute("select 7 as v")[1].v)
      m:close()
      return err
    end)
  end)

  it("reports a COMMIT that never reached the server as outcome unknown (it rolled back)", function()
    H.check({ id = "T5", fault = "connection cut instead of sending COMMIT",
              expected = "error with outcome=unknown; no row; pool recovers",
              observed = "outcome=unknown, 0 rows, pool ok", rows = 1 }, function()
      local m = via(proxy)
      local t0 = proxy:status().triggered
      proxy:set("eat_commit")
      local ok, err = pcall(m.session_scope, m, function(s)
        s:execute("insert into fault_t values (2, 'commit eaten')")
      end)
      assert.is_false(ok)
      assert.equal("unknown", err.outcome)
      assert.equal(t0 + 1, proxy:status().triggered)
      assert.is_true(settle(direct, "fault_t", 0))
      assert.equal(8, m:execute("select 8 as v")[1].v)
      m:close()
    end)
  end)

  it("never retries a scope whose COMMIT outcome is unknown, even with reconnect", function()
    H.check({ id = "T5", fault = "retry helper (attempts=5, reconnect) and a connection cut after COMMIT",
              expected = "one attempt only; the event lands exactly once",
              observed = "1 attempt, 1 row", rows = 1 }, function()
      local m = via(proxy)
      proxy:set("drop_commit")
      local calls = 0
      local ok, err = pcall(retry.session_scope, m, function(s)
        calls = calls + 1
        s:execute("insert into fault_t values (3, 'exactly once')")
      end, { attempts = 5, reconnect = true, backoff = 0 })
      assert.is_false(ok)
      assert.equal("unknown", err.outcome)
      assert.equal(1, calls)
      assert.equal(1, err.attempts)
      assert.is_true(settle(direct, "fault_t", 1))
      m:close()
    end)
  end)

  it("fails a query in flight when its backend is killed, and the pool replaces the connection", function()
    H.check({ id = "P9", fault = "pg_terminate_backend during pg_sleep(5) inside a scope",
              expected = "connection_lost error (08006) within a second; scope not committed; connection discarded",
              observed = function(elapsed) return string.format("failed after %.2f s, 0 rows, discarded", elapsed) end,
              rows = 1 }, function()
      local m = testdb.manager({ pool_size = 2, max_overflow = 0 })
      local before = m:get_pool_status().discards
      local t0
      local ok, err = pcall(m.session_scope, m, function(s)
        s:execute("insert into fault_t values (4, 'killed')")
        local pid = s:scalar("select pg_backend_pid()")
        local killer = H.spawn("sleep 0.3; " .. H.q(testdb.bin) .. " --url " .. H.q(testdb.url) ..
                               " -e " .. H.q("db:execute('select pg_terminate_backend($1)', " .. pid .. ")"))
        t0 = H.now()
        s:execute("select pg_sleep(5)")
        H.wait(killer)
      end)
      local elapsed = H.now() - t0
      assert.is_false(ok)
      assert.is_true(err.connection_lost)
      assert.equal("08006", err.sqlstate)
      assert.is_true(elapsed < 3, "failed after " .. elapsed .. " s")
      assert.equal(0, count(direct, "fault_t"))
      local st = m:get_pool_status()
      assert.equal(0, st.checked_out)
      assert.equal(before + 1, st.discards)
      assert.equal(9, m:execute("select 9 as v")[1].v)
      m:close()
      return elapsed
    end)
  end)

  it("loses no acknowledged write in a crash (pg_ctl -m immediate) and recovers by itself", function()
    H.check({ id = "P8/P9", fault = "server crash (immediate stop) with 50 acknowledged inserts and one open transaction",
              expected = "every acknowledged row present, the open one absent; pool recovers without restart of the client",
              observed = function(v) return H.summary(v) end,
              rows_fn = function(v) return v.rows end }, function()
      -- Acknowledged must mean durable: the fast test cluster runs with
      -- synchronous_commit=off, so these connections turn it back on.
      local m = testdb.manager({ pool_size = 3, max_overflow = 0, options = "-c synchronous_commit=on" })
      local L = H.ledger()
      for i = 1, 50 do L:note(i, pcall(m.execute, m, "insert into fault_t values ($1, 'before crash')", i)) end
      local open = m:session()
      open:execute("insert into fault_t values (1001, 'open at the crash')")
      testdb.restart("immediate")
      local ok, err = pcall(open.commit, open)
      assert.is_false(ok) -- never a silent success
      assert.is_true(err.connection_lost)
      L:note(1001, ok, err)
      open:close()
      -- The pooled connections died with the server; retrying with
      -- reconnect absorbs the stale ones (each failure happens before
      -- COMMIT is sent, so nothing can apply twice).
      for i = 51, 60 do
        L:note(i, pcall(retry.session_scope, m, function(s)
          s:execute("insert into fault_t values ($1, 'after crash')", i)
        end, { attempts = 4, reconnect = true, backoff = 0.05 }))
      end
      local v = L:verify(direct, "fault_t")
      assert.equal(60, v.acked)
      assert.same({ 0, 0, 0 }, { v.lost, v.phantom, v.duplicates })
      assert.equal(0, count(direct, "fault_t", "id = 1001"))
      assert.equal(0, m:get_pool_status().checked_out)
      m:close()
      return v
    end)
  end)

  it("fails a query in flight during a fast restart, never returns a wrong result, and recovers", function()
    H.check({ id = "P8", fault = "pg_ctl restart -m fast while pg_sleep(10) runs in a scope",
              expected = "the statement fails with connection_lost; nothing committed; next scopes work",
              observed = "failed with connection_lost; 0 rows; pool recovered", rows = 1 }, function()
      local m = testdb.manager({ pool_size = 2, max_overflow = 0, pool_pre_ping = true })
      local restarter = H.spawn("sleep 0.5; " .. H.q(testdb.bin) .. " -e " .. H.q(string.format(
        "local l = require('caracal.localdb'); l.stop{home=%q, mode='fast'}; " ..
        "l.start{home=%q, listen='127.0.0.1', port=%d, fast=true, quiet=true}", testdb.home, testdb.home, testdb.port)))
      local ok, err = pcall(m.session_scope, m, function(s)
        s:execute("insert into fault_t values (5, 'in flight')")
        s:execute("select pg_sleep(10)")
      end)
      assert.is_true(H.wait(restarter, 60))
      assert.is_false(ok)
      assert.is_true(err.connection_lost)
      -- with pre-ping, the first scope after the restart already works
      m:session_scope(function(s) s:execute("insert into fault_t values (6, 'after')") end)
      assert.equal(0, count(direct, "fault_t", "id = 5"))
      assert.equal(1, count(direct, "fault_t", "id = 6"))
      m:close()
    end)
  end)

  it("bounds a connect that hangs by connect_timeout, with the pool's counters restored", function()
    H.check({ id = "P10", fault = "a connect that hangs (the proxy accepts and never answers)",
              expected = "checkout fails with kind=connect after connect_timeout (2 s), not later; no slot leaked",
              observed = function(e) return string.format("failed after %.2f s; counters restored", e) end }, function()
      local m = via(proxy, { connect_timeout = 2, pool_timeout = 1 })
      proxy:set("hang")
      local t0 = H.now()
      local ok, err = pcall(m.execute, m, "select 1")
      local elapsed = H.now() - t0
      assert.is_false(ok)
      assert.equal("connect", err.kind)
      assert.is_true(elapsed >= 1.9 and elapsed < 4.5, "took " .. elapsed .. " s")
      local st = m:get_pool_status()
      assert.same({ 0, 0, 0 }, { st.total, st.connecting, st.checked_out })
      proxy:set("pass")
      assert.equal(1, m:execute("select 1 as v")[1].v)
      m:close()
      return elapsed
    end)
  end)

  it("fails a refused connect at once, leaks no overflow slot, and recovers", function()
    H.check({ id = "P3", fault = "connections refused while 3 are checked out (1 of them overflow)",
              expected = "immediate connect error; overflow and total unchanged; next acquire works once back",
              observed = "refused in < 1 s; counts unchanged; recovered" }, function()
      local m = via(proxy, { pool_size = 2, max_overflow = 2 })
      local held = {}
      for i = 1, 3 do
        held[i] = m:session()
        held[i]:execute("select 1")
      end
      local st0 = m:get_pool_status()
      assert.same({ 3, 1 }, { st0.total, st0.overflow })
      proxy:set("refuse")
      local t0 = H.now()
      local extra = m:session()
      local ok, err = pcall(extra.execute, extra, "select 1")
      assert.is_false(ok)
      assert.equal("connect", err.kind)
      assert.is_true(H.now() - t0 < 1)
      local st = m:get_pool_status()
      assert.same({ 3, 1, 3, 0 }, { st.total, st.overflow, st.checked_out, st.connecting })
      extra:close()
      proxy:set("pass")
      local again = m:session()
      assert.equal(2, again:scalar("select 2"))
      again:close()
      for _, s in ipairs(held) do s:close() end
      m:close()
    end)
  end)

  it("survives every connection being reset at once (idle and in a transaction)", function()
    H.check({ id = "P7/P8", fault = "all proxied connections reset (RST) at once",
              expected = "the transaction fails as lost and is not committed; with pre-ping no later statement fails",
              observed = "lost transaction reported, 0 rows; later statements fine", rows = 1 }, function()
      local m = via(proxy, { pool_size = 3, pool_pre_ping = true })
      for i = 1, 3 do m:execute("select $1::int", i) end -- idle connections
      local s = m:session()
      s:execute("insert into fault_t values (7, 'reset')")
      proxy:set("reset_all")
      local ok, err = pcall(s.commit, s)
      assert.is_false(ok)
      assert.is_true(err.connection_lost)
      s:close()
      assert.equal(0, count(direct, "fault_t"))
      for i = 1, 5 do assert.equal(i, m:execute("select $1::int as v", i)[1].v) end
      m:close()
    end)
  end)
end)
