-- Sessions and transaction scopes against the throwaway cluster.
local core = require "caracal.core"
local testdb = require "testdb"

describe("sessions and transaction scopes", function()
  local m

  before_each(function()
    m = testdb.manager({ pool_size = 2, max_overflow = 0, pool_timeout = 2 })
    m:execute("drop table if exists scope_t")
    m:execute("create table scope_t(id int primary key, note text)")
  end)

  after_each(function()
    m:close()
  end)

  local function ids()
    local out = {}
    for _, r in ipairs(m:execute("select id from scope_t order by id")) do out[#out + 1] = r.id end
    return out
  end

  it("commits a scope that succeeds and returns its values", function()
    local a, b = m:session_scope(function(s)
      s:execute("insert into scope_t values ($1, $2)", 1, "one")
      return "done", 2
    end)
    assert.equal("done", a)
    assert.equal(2, b)
    assert.same({ 1 }, ids())
  end)

  it("rolls back a failing scope and re-raises the original error value", function()
    local sentinel = { reason = "custom" }
    local ok, err = pcall(m.session_scope, m, function(s)
      s:execute("insert into scope_t values (1, 'x')")
      error(sentinel)
    end)
    assert.is_false(ok)
    assert.is_true(rawequal(sentinel, err))
    assert.same({}, ids())

    ok, err = pcall(m.session_scope, m, function(s)
      s:execute("insert into scope_t values (1, 'x')")
      error("plain message", 0)
    end)
    assert.equal("plain message", err)
    assert.same({}, ids())
  end)

  it("undoes only a failing nested scope (savepoint)", function()
    m:session_scope(function(s)
      s:execute("insert into scope_t values (1, 'outer')")
      local ok = pcall(s.session_scope, s, function(inner)
        inner:execute("insert into scope_t values (2, 'inner')")
        error("inner fails")
      end)
      assert.is_false(ok)
      s:session_scope(function(inner)
        inner:execute("insert into scope_t values (3, 'second inner')")
        inner:session_scope(function(third)
          third:execute("insert into scope_t values (4, 'third level')")
        end)
        local ok3 = pcall(inner.session_scope, inner, function(third)
          third:execute("insert into scope_t values (5, 'undone')")
          third:execute("select 1/0")
        end)
        assert.is_false(ok3)
      end)
    end)
    assert.same({ 1, 3, 4 }, ids())
  end)

  it("a nested scope on a pool of one uses the same connection", function()
    local one = testdb.manager({ pool_size = 1, max_overflow = 0, pool_timeout = 1 })
    one:session_scope(function(s)
      local pid = s:scalar("select pg_backend_pid()")
      s:session_scope(function(a)
        a:session_scope(function(b)
          b:session_scope(function(c)
            assert.equal(pid, c:scalar("select pg_backend_pid()"))
          end)
        end)
      end)
    end)
    one:close()
  end)

  it("commits a <close> session on a clean exit and rolls back on error", function()
    do
      local s <close> = m:session()
      s:execute("insert into scope_t values (1, 'kept')")
    end
    assert.same({ 1 }, ids())
    local ok = pcall(function()
      local s <close> = m:session()
      s:execute("insert into scope_t values (2, 'dropped')")
      error("boom")
    end)
    assert.is_false(ok)
    assert.same({ 1 }, ids())
    assert.equal(0, m:get_pool_status().checked_out)
  end)

  it("explicit commit, rollback and close", function()
    local s = m:session()
    s:execute("insert into scope_t values (1, 'a')")
    s:commit()
    s:execute("insert into scope_t values (2, 'b')")
    s:rollback()
    s:execute("insert into scope_t values (3, 'c')")
    s:close() -- rolls back what is uncommitted
    assert.same({ 1 }, ids())
    assert.has_error(function() s:execute("select 1") end, "attempt to use a closed session")
  end)

  it("reports a COMMIT of an aborted transaction as a failure", function()
    local s = m:session()
    s:execute("insert into scope_t values (1, 'a')")
    assert.is_false(pcall(s.execute, s, "select 1/0"))
    assert.equal("failed", s:transaction_state())
    local ok, err = pcall(s.commit, s)
    assert.is_false(ok)
    assert.equal("25P02", err.sqlstate)
    assert.equal("rolled_back", err.outcome)
    assert.matches("COMMIT failed", tostring(err))
    s:close()
    assert.same({}, ids())
  end)

  it("raises structured errors that read like psql and name the script line", function()
    m:execute("insert into scope_t values (1, 'a')")
    local line
    local ok, err = pcall(function()
      m:session_scope(function(s)
        line = debug.getinfo(1, "l").currentline + 1
        s:execute("insert into scope_t values ($1, $2)", 1, "dup")
      end)
    end)
    assert.is_false(ok)
    assert.is_true(core.is_error(err))
    assert.equal("23505", err.sqlstate)
    assert.equal("scope_t_pkey", err.constraint)
    assert.equal("scope_t", err.table)
    assert.equal("Key (id)=(1) already exists.", err.detail)
    assert.equal("insert into scope_t values ($1, $2)", err.sql)
    assert.matches("session_spec.lua:" .. line, err.where, 1, true)
    local text = tostring(err)
    assert.equal('ERROR 23505: duplicate key value violates unique constraint "scope_t_pkey"\n' ..
                 "DETAIL: Key (id)=(1) already exists.", text:match("^[^\n]*\n[^\n]*"))
  end)

  it("sends parameters separately from the SQL, never interpolated", function()
    local nasty = { "' OR 1=1 --", "'; DROP TABLE scope_t; --", "$$ dollar $$", "back\\slash",
                    "\u{2019}quote\u{201C}" }
    m:session_scope(function(s)
      for i, v in ipairs(nasty) do s:execute("insert into scope_t values ($1, $2)", i, v) end
    end)
    local rows = m:execute("select note from scope_t order by id")
    for i, v in ipairs(nasty) do assert.equal(v, rows[i].note) end
    local ok, err = pcall(m.execute, m, "select 1; select 2")
    assert.is_false(ok)
    assert.matches("cannot insert multiple commands into a prepared statement", err.message, 1, true)
  end)

  it("returns rows, the affected count and the command tag", function()
    local rows, count, tag = m:execute("insert into scope_t values (1, 'a'), (2, null)")
    assert.equal(0, #rows)
    assert.same({}, rows.columns)
    assert.equal(2, count)
    assert.equal("INSERT 0 2", tag)
    rows, count = m:execute("select id, note from scope_t order by id")
    assert.equal(2, count)
    assert.same({ "id", "note" }, rows.columns)
    assert.equal("a", rows[1].note)
    assert.is_nil(rows[2].note)
  end)

  it("decodes types exactly", function()
    local r = m:execute([[select 9223372036854775807::int8 as big, (-9223372036854775808)::int8 as small,
      true as yes, 0.1::float8 as f, 12.340::numeric(10,3) as n, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u,
      '{"a":[1,2,{"b":null}],"e":[]}'::jsonb as j, array['x','y']::text[] as arr,
      '2024-02-29 23:59:59.123456+00'::timestamptz as t, null::int as missing]])[1]
    assert.equal(math.maxinteger, r.big)
    assert.equal(math.mininteger, r.small)
    assert.equal("integer", math.type(r.big))
    assert.is_true(r.yes)
    assert.equal(0.1, r.f)
    assert.equal("12.340", tostring(r.n))
    assert.equal("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.u)
    assert.equal(2, r.j.a[2])
    assert.equal(core.null, r.j.a[3].b)
    assert.equal('{"a":[1,2,{"b":null}],"e":[]}', core.json_encode(r.j))
    assert.same({ "x", "y" }, { r.arr[1], r.arr[2] })
    assert.equal("2024-02-29T23:59:59.123456Z", tostring(r.t))
    assert.is_nil(r.missing)
  end)

  it("decodes dates across leap days, before 1970 and at year 1", function()
    local r = m:execute("select $1::date as a, $2::date as b, $3::date as c, 'infinity'::date as d",
                        "2024-02-29", "1969-12-31", "0001-01-01")[1]
    assert.same({ "2024-02-29", "1969-12-31", "0001-01-01", "infinity" }, { r.a, r.b, r.c, r.d })
  end)

  it("decodes instants the same whatever the session's TimeZone and DateStyle", function()
    m:session_scope(function(s)
      s:execute("set local timezone = 'Asia/Tokyo'")
      s:execute("set local datestyle = 'SQL, DMY'")
      local r = s:first("select '2001-02-03 04:05:06.7+00'::timestamptz as tz, '2001-02-03 04:05:06.7'::timestamp as naive")
      assert.equal("2001-02-03T04:05:06.700000Z", tostring(r.tz))
      assert.equal("2001-02-03T04:05:06.700000Z", tostring(r.naive))
    end)
  end)

  it("resets session state changed by a borrower before the next one", function()
    local one = testdb.manager({ pool_size = 1, max_overflow = 0 })
    local s = one:session()
    s:execute("set search_path = nowhere")
    s:commit()
    s:close()
    one:session_scope(function(s2)
      assert.equal('"$user", public', s2:scalar("show search_path"))
    end)
    one:close()
  end)
end)
