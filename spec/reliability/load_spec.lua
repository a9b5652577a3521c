-- Load, and a crash under load: many tasks (coroutines in non-blocking
-- mode) writing for a bounded time, with the pool's counters sampled all
-- along; exact row counts at the end. In the second case the server is
-- crashed (pg_ctl -m immediate) and restarted in the middle of the run:
-- no acknowledged write may be lost, no failed one may appear, and the
-- pool must recover by itself. (The same with threads: test_load.c.)
package.path = "spec/reliability/?.lua;" .. package.path
local core = require "caracal.core"
local testdb = require "testdb"
local H = require "harness"

local SECONDS = tonumber(os.getenv("CARACAL_LOAD_SECONDS")) or 5

-- Counters consistent? Returns nil or a description of what is wrong.
local function inconsistent(st)
  local overflow = math.max(0, st.total - st.size)
  if st.total ~= st.checked_in + st.checked_out + st.connecting then return "total ~= in + out + connecting" end
  if st.overflow ~= overflow then return "overflow ~= max(0, total - size)" end
  if st.max_overflow >= 0 and st.overflow > st.max_overflow then return "overflow > max_overflow" end
  if st.checked_in > st.size then return "more idle than pool_size" end
  return nil
end

-- Run `tasks` writer tasks and a sampler until `seconds` pass; each
-- writer commits one row per scope. Returns the ledger and the sampler's
-- findings.
local function run_load(m, tasks, seconds, during)
  local L = H.ledger()
  local samples, bad, first_bad, peak = 0, 0, nil, 0
  local deadline = H.now() + seconds
  local done = 0
  core.set_nonblocking(true)
  local errors = {}
  core.on_error(function(err) errors[#errors + 1] = tostring(err) end)
  for t = 1, tasks do
    core.spawn(function()
      local i = 0
      while H.now() < deadline do
        i = i + 1
        local id = t * 1000000 + i
        local ok, err = pcall(m.session_scope, m, function(s)
          s:execute("insert into load_t(id, task) values ($1, $2)", id, t)
          if i % 5 == 0 then s:execute("select pg_sleep(0.005)") end
        end)
        L:note(id, ok, err)
        if not ok then core.sleep(0.05) end -- the server is down: do not spin
      end
      done = done + 1
    end)
  end
  core.spawn(function()
    while done < tasks do
      local st = m:get_pool_status()
      samples = samples + 1
      local why = inconsistent(st)
      if why then
        bad = bad + 1
        first_bad = first_bad or (why .. ": " .. core.json_encode(st))
      end
      peak = math.max(peak, st.total)
      core.sleep(0.002)
    end
  end)
  if during then during() end
  local ok, err = pcall(function()
    local limit = H.now() + seconds + 60
    while core.poll(0.01) > 0 do
      if H.now() > limit then error("tasks still running 60 s after the deadline") end
      core.sleep(0.001)
    end
  end)
  core.on_error(nil)
  core.set_nonblocking(false)
  assert(ok, err)
  assert.same({}, errors)
  return L, { samples = samples, bad = bad, first_bad = first_bad, peak = peak }
end

describe("load", function()
  local check

  setup(function()
    check = testdb.manager({ pool_size = 1, max_overflow = 0, pool_pre_ping = true })
  end)

  teardown(function()
    pcall(check.execute, check, "drop table if exists load_t")
    check:close()
  end)

  before_each(function()
    check:execute("drop table if exists load_t")
    check:execute("create table load_t(id bigint primary key, task int)")
  end)

  it("40 tasks on a pool of 5+5 for a bounded time: exact rows, counters consistent at every sample", function()
    H.check({ id = "load", fault = string.format("40 coroutine tasks x scopes for %d s, pool 5+5", SECONDS),
              expected = "rows = acknowledged commits, none failed; counters consistent at every sample",
              observed = function(v, s) return H.summary(v) .. string.format("; %d samples, %d bad, peak total %d",
                s.samples, s.bad, s.peak) end,
              rows_fn = function(v) return v.rows end }, function()
      local m = testdb.manager({ pool_size = 5, max_overflow = 5, pool_timeout = 10 })
      local L, s = run_load(m, 40, SECONDS)
      local v = L:verify(check, "load_t")
      assert.is_true(v.acked > 0)
      assert.equal(0, v.failed)
      assert.same({ 0, 0, 0 }, { v.lost, v.phantom, v.duplicates })
      assert.equal(v.acked, v.rows)
      assert.equal(0, s.bad, s.first_bad)
      assert.is_true(s.peak <= 10)
      assert.equal(0, m:get_pool_status().checked_out)
      m:close()
      return v, s
    end)
  end)

  it("a crash and restart under load loses no acknowledged write, shows no failed one, and recovers", function()
    H.check({ id = "P8/P9/T5", fault = string.format("40 tasks writing for %d s; pg_ctl -m immediate stop after 1.5 s, start 1 s later", SECONDS + 3),
              expected = "every acknowledged row present once; no failed row present; unknown ones at most once; " ..
                         "counters consistent; pool works afterwards without a restart",
              observed = function(v, s) return H.summary(v) .. string.format("; %d samples, %d bad", s.samples, s.bad) end,
              rows_fn = function(v) return v.rows end }, function()
      -- synchronous_commit=on: an acknowledged commit is in the WAL the
      -- crash leaves behind (the fast test cluster turns it off).
      local m = testdb.manager({ pool_size = 5, max_overflow = 5, pool_timeout = 10, connect_timeout = 2,
                                 options = "-c synchronous_commit=on" })
      local crasher
      local L, s = run_load(m, 40, SECONDS + 3, function()
        crasher = H.spawn("sleep 1.5; " .. H.q(testdb.bin) .. " -e " .. H.q(string.format(
          "local l = require('caracal.localdb'); l.stop{home=%q, mode='immediate'}; os.execute('sleep 1'); " ..
          "l.start{home=%q, listen='127.0.0.1', port=%d, fast=true, quiet=true}", testdb.home, testdb.home, testdb.port)))
      end)
      assert.is_true(H.wait(crasher, 60))
      local v = L:verify(check, "load_t")
      assert.is_true(v.acked > 0)
      assert.is_true(v.failed + v.unknown > 0, "the crash was seen by the writers")
      assert.same({ 0, 0, 0 }, { v.lost, v.phantom, v.duplicates })
      assert.equal(0, s.bad, s.first_bad)
      -- the pool recovered by itself: the run's last scopes committed, and now
      assert.equal(1, m:execute("select 1 as v")[1].v)
      assert.equal(0, m:get_pool_status().checked_out)
      m:close()
      return v, s
    end)
  end)
end)
