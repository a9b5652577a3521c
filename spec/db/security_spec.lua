-- Bad input and secrets: injection strings stored verbatim through every
-- model's string fields, identifiers quoted or refused, invalid encodings,
-- NUL bytes, too many parameters, huge and deeply nested values, exact
-- numbers; no password in any output; and a least-privilege role set-up
-- under which the app role cannot change or hide ledger rows.
package.path = "spec/reliability/?.lua;" .. package.path
local core = require "caracal.core"
local db = require "caracal.db"
local models = require "caracal.models"
local schema = require "caracal.schema"
local roles = require "caracal.roles"
local ops = require "caracal.migrate.ops"
local sqltext = require "caracal.migrate.sqltext"
local format = require "caracal.format"
local testdb = require "testdb"
local H = require "harness"

local NASTY = {
  "' OR 1=1 --", "'; DROP TABLE principals; --", "$$ dollar $$", "$q$ tagged $q$", "back\\slash\\'",
  "\u{2019}unicode quote\u{201C}", "\"double\" quotes", "a' || pg_sleep(5) || 'b", "/* comment */ --",
  "E'\\x00'", "%s %d %n {}", "line\r\nbreak\ttab", "; select 1;", "\\\\.\\\\", "ʼ OR ʼ1ʼ=ʼ1",
}

-- A value for a column: nasty text where the column is free text.
local function value_for(tbl, col, i, made)
  local t = col.type
  if col.serial then return nil end
  if col.references then
    local target = col.references:match("^([^.]+)")
    if target == tbl.name then return nil end
    return made[target]
  end
  if t == "uuid" then return nil end -- defaults
  if t == "varchar" then
    if col.values then return col.values[1] end
    if col.pattern then return "USD" end
    local s = NASTY[(i - 1) % #NASTY + 1] .. " #" .. i
    if utf8.len(s) > col.length then s = s:sub(1, col.length) end
    while not utf8.len(s) do s = s:sub(1, -2) end
    return s
  end
  if t == "integer" or t == "bigint" then return col.min or 1 end
  if t == "numeric" then return "1.5" end
  if t == "boolean" then return false end
  if t == "timestamp" then
    if col.name == "valid_until" then return core.Instant(os.time() + 3600) end
    return core.Instant(os.time())
  end
  if t == "jsonb" then
    if col.json == "array" then return core.json_array({ NASTY[1], NASTY[2], NASTY[6] }) end
    return { [NASTY[2]] = NASTY[1], nested = { NASTY[3], NASTY[8] } }
  end
end

local function same_value(a, b)
  if type(a) == "table" and type(b) == "table" then
    return core.json_encode(a) == core.json_encode(b)
  end
  if core.is_instant(a) or core.is_decimal(a) then return tostring(a) == tostring(b) end
  return a == b
end

describe("bad input", function()
  local d

  setup(function()
    d = testdb.fresh_database("sec", { migrate = "head" })
  end)

  teardown(function()
    d.drop()
  end)

  it("stores injection strings verbatim in every string field of every model", function()
    H.check({ id = "S1", fault = "SQL injection strings in every varchar/jsonb field of all 8 models",
              expected = "stored and read back byte for byte; no table dropped",
              observed = function(nf) return nf .. " fields stored verbatim" end,
              rows = #schema.tables }, function()
      local made, fields = {}, 0
      d.manager:session_scope(function(s)
        for i, tbl in ipairs(schema.tables) do
          local f = {}
          for j, col in ipairs(tbl.columns) do
            local v = value_for(tbl, col, i * 100 + j, made)
            if v ~= nil then f[col.attr] = v end
          end
          local obj = models[tbl.model](f)
          s:add(obj)
          s:flush()
          made[tbl.name] = rawget(obj, tbl.primary_key.attr)
          local back = s:get(models[tbl.model], made[tbl.name])
          for _, col in ipairs(tbl.columns) do
            local want = f[col.attr]
            if want ~= nil and (col.type == "varchar" or col.type == "jsonb") then
              fields = fields + 1
              assert.is_true(same_value(want, rawget(back, col.attr)),
                tbl.model .. "." .. col.attr .. ": " .. core.json_encode({ want, rawget(back, col.attr) }))
            end
          end
        end
      end)
      -- Read back on a new connection too, through plain SQL.
      local name = d.manager:execute("select name from principals")[1].name
      assert.equal(NASTY[(102 - 1) % #NASTY + 1] .. " #102", name)
      assert.equal(8, d.manager:execute([[select count(*) as n from pg_tables where schemaname = 'public'
        and tablename in ('principals', 'execution_mandates', 'merkle_roots', 'ledger_events',
        'authority_ledger_events', 'authority_policies', 'ledger_snapshots', 'audit_logs')]])[1].n)
      local ok, err = pcall(d.manager.execute, d.manager, "select 1; drop table principals")
      assert.is_false(ok)
      assert.matches("cannot insert multiple commands into a prepared statement", err.message, 1, true)
      return fields
    end)
  end)

  it("quotes identifiers in DDL and refuses names it cannot quote faithfully", function()
    H.check({ id = "S2", fault = "identifiers: we\"ird; drop, 63/64 bytes, empty, NUL, invalid UTF-8",
              expected = "quoted with \" doubled (libpq and the offline quoting agree); the others refused",
              observed = "quoted; 64 bytes, empty, NUL and invalid UTF-8 refused" }, function()
      local conn = d.manager.pool:checkout("security_spec")
      local weird = 'we"ird; drop'
      assert.equal('"we""ird; drop"', conn:quote_ident(weird))
      assert.equal(conn:quote_ident(weird), sqltext.quote_ident(weird))
      local n63 = ("n"):rep(63)
      assert.equal('"' .. n63 .. '"', conn:quote_ident(n63))
      for _, bad in ipairs({ ("n"):rep(64), "", "a\0b", "\xC3\x28", "\xff" }) do
        assert.is_false(pcall(conn.quote_ident, conn, bad), bad)
        assert.is_false(pcall(sqltext.quote_ident, bad), bad)
      end
      local ok, err = pcall(sqltext.quote_ident, ("n"):rep(64))
      assert.is_false(ok)
      assert.matches("PostgreSQL allows 63", tostring(err), 1, true)
      -- The migration ops quote every identifier they build into DDL.
      local sent = {}
      local op = ops.new({ run = function(sql) sent[#sent + 1] = sql; return conn:exec_script(sql) end,
                           quote = function(name) return conn:quote_ident(name) end, transactional = false })
      op.create_table(weird, { { "id", "INTEGER", primary_key = true }, { 'col"; --', "TEXT", nullable = true } })
      assert.equal(1, #conn:execute("select 1 from pg_class where relname = $1", weird))
      assert.matches('"we""ird; drop"', sent[1], 1, true)
      assert.is_false(pcall(op.create_table, ("t"):rep(64), { { "id", "INTEGER" } }))
      assert.is_false(pcall(op.create_table, "ok_name", { { "id", "INTEGER; drop table x" } }))
      op.drop_table(weird)
      assert.equal(0, #conn:execute("select 1 from pg_class where relname = $1", weird))
      conn:release()
    end)
  end)

  it("names the limit when conn:quote_ident refuses a 64-byte name", function()
    local conn = d.manager.pool:checkout("security_spec")
    local ok, err = pcall(conn.quote_ident, conn, ("n"):rep(64))
    conn:release()
    assert.is_false(ok)
    -- (it once said "invalid option '%.' to 'lua_pushfstring'": the name
    -- was refused, but the message was lost)
    assert.matches("PostgreSQL allows 63", tostring(err), 1, true)
    assert.matches("'" .. ("n"):rep(40) .. "...'", tostring(err), 1, true)
  end)

  it("treats database names as literal names, never as connection strings", function()
    H.check({ id = "S4", fault = "dbname 'x host=evil.example' and 'postgresql://evil/db'",
              expected = "a literal database name on the configured host (expand_dbname = 0)",
              observed = "3D000 database ... does not exist, from the configured server" }, function()
      for _, name in ipairs({ "x host=evil.example", "postgresql://evil/db" }) do
        local m = db.create_connection_manager({ host = "127.0.0.1", port = testdb.port, user = "caracal",
                                                 database = name, pool_size = 1, connect_timeout = 2 })
        local ok, err = pcall(m.execute, m, "select 1")
        assert.is_false(ok)
        assert.matches('database "' .. name .. '" does not exist', tostring(err), 1, true)
        m:close()
      end
    end)
  end)

  it("rejects invalid UTF-8 with 22021 and keeps the connection usable", function()
    H.check({ id = "B2", fault = "text parameters 0xC3 0x28, overlong 0xC0 0xAF, surrogate 0xED 0xA0 0x80",
              expected = "22021 each; the same connection answers the next query",
              observed = "22021 x3; connection reused" }, function()
      local m = testdb.manager({ pool_size = 1, max_overflow = 0 })
      local pid = m:execute("select pg_backend_pid() as p")[1].p
      for _, bad in ipairs({ "\xC3\x28", "\xC0\xAF", "\xED\xA0\x80" }) do
        local ok, err = pcall(m.execute, m, "select $1::text as t", bad)
        assert.is_false(ok)
        assert.equal("22021", err.sqlstate)
        assert.equal(pid, m:execute("select pg_backend_pid() as p")[1].p)
      end
      m:close()
    end)
  end)

  it("refuses a NUL byte in a text parameter before sending; bytea keeps all bytes", function()
    H.check({ id = "B1", fault = "\"a\\0b\" as text, and as bytea",
              expected = "text: an error before anything is sent (the transaction is not aborted); bytea: 3 bytes back",
              observed = "refused client-side; bytea 3 bytes" }, function()
      d.manager:session_scope(function(s)
        local ok, err = pcall(s.execute, s, "select $1::text", "a\0b")
        assert.is_false(ok)
        assert.matches("NUL", tostring(err), 1, true)
        -- A server error would have aborted the transaction.
        assert.equal("in_transaction", s:transaction_state())
        assert.equal("a\0b", s:scalar("select $1::bytea", "a\0b"))
        assert.equal(3, #s:scalar("select $1::bytea", "a\0b"))
      end)
      local ok = pcall(models.Principal, { name = "a\0b", principal_type = "agent", owner = "o" })
      assert.is_false(ok)
    end)
  end)

  it("refuses more parameters than the protocol allows before sending; odd values fail cleanly", function()
    H.check({ id = "B4", fault = "70000 parameters; nil holes; table/function/userdata values; empty SQL",
              expected = "errors before sending (transaction intact); nil is NULL; never a crash",
              observed = "refused client-side; transaction intact" }, function()
      d.manager:session_scope(function(s)
        local args = {}
        for i = 1, 70000 do args[i] = i end
        local ok, err = pcall(s.execute, s, "select $1::int", table.unpack(args))
        assert.is_false(ok)
        assert.equal("too_many_parameters", err.kind)
        assert.matches("at most 7498 in one statement", err.message, 1, true)
        assert.equal("in_transaction", s:transaction_state())
        assert.is_nil(s:scalar("select $1::int + $2::int", 1, nil))
        assert.equal(3, s:scalar("select coalesce($1::int, $2::int, $3::int)", nil, nil, 3))
        assert.is_false(pcall(s.execute, s, "select $1::text", print))
        assert.is_false(pcall(s.execute, s, "select $1::text", io.stdout))
        assert.is_false(pcall(s.execute, s, "select $1::int"))
        assert.equal("in_transaction", s:transaction_state())
      end)
      -- A table is sent as an array literal (or JSON): the server judges it.
      local ok_t, err_t = pcall(d.manager.execute, d.manager, "select $1::int", {})
      assert.is_false(ok_t)
      assert.equal("22P02", err_t.sqlstate)
      assert.same({ 1, 2 }, (function()
        local a = d.manager:execute("select $1::int[] as a", { 1, 2 })[1].a
        return { a[1], a[2] }
      end)())
      local ok, err = pcall(d.manager.execute, d.manager, "")
      assert.is_false(ok)
      assert.matches("no statement", tostring(err))
      ok = pcall(d.manager.execute, d.manager, "-- only a comment")
      assert.is_false(ok)
    end)
  end)

  it("fails a statement with thousands of parameters cleanly, and the pool recovers", function()
    -- libpq refuses a ParameterDescription over 30000 bytes (about 7500
    -- parameters) as a protocol error and drops the connection; whatever
    -- the limit, the caller gets an error and the next statement works.
    H.check({ id = "B4", fault = "a statement with 8000 parameters (libpq's Describe limit is ~7498)",
              expected = "an error (no wrong result); the pool replaces the connection",
              observed = function(e) return "error: " .. tostring(e.message):sub(1, 60) .. "; recovered" end }, function()
      local m = testdb.manager({ pool_size = 1, max_overflow = 0 })
      local parts, args = {}, {}
      for i = 1, 8000 do parts[i] = "$" .. i .. "::int"; args[i] = i end
      local ok, err = pcall(m.execute, m, "select array_length(array[" .. table.concat(parts, ",") .. "], 1) as n",
                            table.unpack(args))
      assert.is_false(ok) -- refused before anything is sent
      assert.equal("too_many_parameters", err.kind)
      assert.equal(1, m:execute("select 1 as v")[1].v)
      assert.equal(0, m:get_pool_status().checked_out)
      m:close()
      return ok and { message = "accepted, 8000 returned" } or err
    end)
  end)

  it("round-trips a 10 MB string; rejects strings over a model's VARCHAR length", function()
    H.check({ id = "B6", fault = "10 MB text parameter and result; a 256-character Principal.name",
              expected = "10 MB back byte for byte; the model rejects 256 > 255 before any round trip",
              observed = "10 MB round trip; model rejected" }, function()
      local big = ("0123456789abcdef"):rep(655360)
      local back = d.manager:execute("select $1::text as t, length($1::text) as n", big)[1]
      assert.equal(#big, back.n)
      assert.is_true(back.t == big)
      local ok, err = pcall(models.Principal, { name = ("x"):rep(256), principal_type = "agent", owner = "o" })
      assert.is_false(ok)
      assert.equal("validation", err.kind)
      assert.matches("at most 255 characters, got 256", err.message, 1, true)
    end)
  end)

  it("refuses JSON nested too deeply, both ways, and keeps the connection", function()
    H.check({ id = "B6", fault = "JSON nested 2000 deep to encode, 100000 '[' to decode, 1000-deep jsonb from the server",
              expected = "clean 'nested too deeply' errors; connection still usable",
              observed = "refused; connection reused" }, function()
      local t = {}
      local c = t
      for _ = 1, 2000 do c[1] = {} c = c[1] end
      local ok, err = pcall(core.json_encode, t)
      assert.is_false(ok)
      assert.matches("nested too deeply", err)
      ok, err = pcall(core.json_decode, ("["):rep(100000))
      assert.is_false(ok)
      assert.matches("nested too deeply", err)
      -- found by fuzz_json (spec/fuzz/regressions/json/negative_zero): a
      -- negative zero is written "-0" and reads back as the number 0
      local back = core.json_decode(core.json_encode({ -0.0, 1.5e300, 9007199254740993 }))
      assert.is_true(back[1] == 0 and back[2] == 1.5e300 and back[3] == 9007199254740993)
      local m = testdb.manager({ pool_size = 1, max_overflow = 0 })
      ok = pcall(m.execute, m, "select $1::jsonb", t)
      assert.is_false(ok)
      ok, err = pcall(m.execute, m, "select (repeat('[', 1000) || repeat(']', 1000))::jsonb as j")
      assert.is_false(ok)
      assert.matches("nested too deeply", tostring(err))
      assert.equal(1, m:execute("select 1 as v")[1].v)
      assert.equal(0, m:get_pool_status().discards)
      m:close()
    end)
  end)

  it("keeps integers exact and floats bit-exact; NaN and infinity are not money", function()
    H.check({ id = "B3", fault = "2^53+1, maxinteger, mininteger via int8; 0.1+0.2, -0.0, 5e-324, 1.797e308 via float8; NaN/inf as cost",
              expected = "integers exact, floats bit-exact (string.pack compare), NaN/inf refused for money, overflow 22003",
              observed = "exact" }, function()
      local m = d.manager
      for _, v in ipairs({ 2 ^ 53 // 1 + 1, math.maxinteger, math.mininteger, 0, -1 }) do
        local back = m:execute("select $1::int8 as v", v)[1].v
        assert.equal("integer", math.type(back))
        assert.equal(v, back)
      end
      for _, v in ipairs({ 0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, 2.0 ^ 53, 1 / 3, -2.5e-300 }) do
        local back = m:execute("select $1::float8 as v", v)[1].v
        assert.equal(string.pack("<d", v), string.pack("<d", back), string.format("%.17g", v))
      end
      local nan = m:execute("select $1::float8 as v", 0 / 0)[1].v
      assert.is_true(nan ~= nan)
      assert.equal(math.huge, m:execute("select $1::float8 as v", math.huge)[1].v)
      for _, bad in ipairs({ 0 / 0, math.huge, -math.huge, 0.1 }) do
        local ok, err = pcall(models.LedgerEvent, { agent_id = core.uuid4(), resource_type = "r", quantity = "1",
                                                     cost = bad })
        assert.is_false(ok)
        assert.equal("validation", err.kind)
      end
      for _, bad in ipairs({ "NaN", "Infinity", "-inf" }) do assert.is_false(pcall(core.Decimal, bad)) end
      local ok, err = pcall(m.execute, m, "select $1::numeric", 0.1)
      assert.is_false(ok)
      assert.matches("not exact", tostring(err))
      ok, err = pcall(m.execute, m, "select $1::int4", 2 ^ 40 // 1)
      assert.is_false(ok)
      assert.equal("22003", err.sqlstate)
      assert.equal("123456789012345.123456",
        tostring(m:execute("select $1::numeric(21,6) as v", core.Decimal("123456789012345.123456"))[1].v))
    end)
  end)
end)

describe("secrets", function()
  local SECRET = "S3cr3t-pw_" .. tostring(math.random(100000, 999999))
  local tmp

  setup(function()
    tmp = H.tmpdir()
  end)

  teardown(function()
    H.sh("rm -rf " .. H.q(tmp))
  end)

  local function encoded(s) return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)) end

  local function assert_clean(what, out)
    assert.is_nil(out:find(SECRET, 1, true), what .. " shows the password:\n" .. out)
    assert.is_nil(out:find(encoded(SECRET), 1, true), what .. " shows the encoded password")
  end

  it("never appear in echo logging, status, tostring, errors or crash paths", function()
    H.check({ id = "S3", fault = "a password in config and URL; echo on; status; tostring; bad URLs; a failed connect; errors in a scope",
              expected = "the password in no output", observed = "absent from every output" }, function()
      -- The test cluster trusts loopback, so the password is accepted and unused.
      local cfg = tmp .. "/caracal.config.lua"
      H.write(cfg, string.format("return { host = '127.0.0.1', port = %d, user = 'caracal', database = 'caracal', " ..
                                 "password = %q, echo = true }", testdb.port, SECRET))
      local bin = H.q(testdb.bin)
      local url = "postgresql://caracal:" .. encoded(SECRET) .. "@127.0.0.1:" .. testdb.port .. "/caracal"
      local runs = {
        { "echo and tostring", bin .. " --config " .. H.q(cfg) .. " -e " .. H.q(
          "db:execute('select $1::int', 1); print(db, db.config, db.pool); " ..
          "local s = db:session(); s:execute('select 1'); print(s); s:close()") },
        { "status", bin .. " --config " .. H.q(cfg) .. " status" },
        { "status --json", bin .. " --url " .. H.q(url) .. " status --json" },
        { "a SQL error inside a scope", bin .. " --config " .. H.q(cfg) .. " -e " .. H.q(
          "db:session_scope(function(s) s:execute('select 1/0') end)") },
        { "a Lua error inside a scope", bin .. " --url " .. H.q(url) .. " -e " .. H.q(
          "db:session_scope(function(s) s:execute('select 1'); local t = nil; return t.x end)") },
        { "a failed connect", bin .. " --url " .. H.q("postgresql://caracal:" .. encoded(SECRET) ..
          "@127.0.0.1:1/caracal?connect_timeout=2") .. " -e " .. H.q("db:execute('select 1')") },
        { "bad %-escape", bin .. " --url " .. H.q("postgresql://u:" .. encoded(SECRET) .. "%zz@h/db") .. " -e 'db:execute(\"select 1\")'" },
        { "bad IPv6 host", bin .. " --url " .. H.q("postgresql://u:" .. encoded(SECRET) .. "@[::1/db") .. " -e 'print(db)'" },
        { "bad port", bin .. " --url " .. H.q("postgresql://u:" .. encoded(SECRET) .. "@h:99999/db") .. " -e 'print(db)'" },
        { "password as a query parameter", bin .. " --url " .. H.q("postgresql://u@127.0.0.1:1/db?password=" ..
          encoded(SECRET) .. "&connect_timeout=2") .. " -e 'db:execute(\"select 1\")'" },
        { "health", bin .. " --url " .. H.q(url) .. " health" },
        { "sandbox", bin .. " --sandbox --url " .. H.q(url) .. " -e " .. H.q(
          "print(db, db.config.password, rawget(db.config, 'password')); db:execute('select 1')") },
      }
      for _, r in ipairs(runs) do
        local out = H.sh("HOME=" .. H.q(tmp) .. " " .. r[2] .. " </dev/null")
        assert_clean(r[1], out)
      end
      -- The echo log really is on, and the masked URL is shown instead.
      local out = H.sh(bin .. " --config " .. H.q(cfg) .. " -e " .. H.q("db:execute('select 42')") .. " </dev/null")
      assert.matches("[caracal] select 42", out, 1, true)
      out = H.sh(bin .. " --config " .. H.q(cfg) .. " status </dev/null")
      assert.matches("caracal:***@127.0.0.1", out, 1, true)
      -- In process: what the REPL prints for each object.
      local m = db.create_connection_manager({ host = "127.0.0.1", port = testdb.port, user = "caracal",
                                               password = SECRET, pool_size = 1 })
      local s = m:session()
      s:execute("select 1")
      for _, v in ipairs({ m, m.config, m.pool, s, s.conn }) do
        assert_clean("tostring", tostring(v))
        assert_clean("REPL value", format.value(v))
      end
      local ok, err = pcall(s.execute, s, "select 1/0")
      assert.is_false(ok)
      assert_clean("error", tostring(err))
      s:close()
      m:close()
      local bad = db.create_connection_manager({ host = "127.0.0.1", port = 1, user = "caracal",
                                                 password = SECRET, connect_timeout = 2 })
      ok, err = pcall(bad.execute, bad, "select 1")
      assert.is_false(ok)
      assert_clean("connect error", tostring(err))
      bad:close()
    end)
  end)
end)

describe("least-privilege roles", function()
  local d, owner, app, migrator, appm

  setup(function()
    d = testdb.fresh_database("roles", { migrate = "head" })
    local sfx = core.uuid4():sub(1, 8)
    owner, app, migrator = "cr_owner_" .. sfx, "cr_app_" .. sfx, "cr_mig_" .. sfx
    d.manager:session_scope(function(s)
      roles.setup(s, { owner = owner, app = app, migrator = migrator })
    end)
    appm = db.create_connection_manager({ url = d.url:gsub("://[^@/]*@", "://" .. app .. "@"), pool_size = 2,
                                          max_overflow = 0 })
  end)

  teardown(function()
    if appm then appm:close() end
    d.drop()
    for _, r in ipairs({ app, migrator, owner }) do
      pcall(testdb.admin, 'DROP ROLE IF EXISTS "' .. r .. '"')
    end
  end)

  it("leave the app role nothing that could change or hide ledger rows", function()
    H.check({ id = "L1/L3/S6", fault = "as the app role: UPDATE, DELETE, TRUNCATE, ALTER TABLE, DISABLE TRIGGER, " ..
                "session_replication_role, SET ROLE owner, CREATE in public, CREATE ROLE",
              expected = "each refused with 42501 (or CA001 from the trigger); roles.check finds nothing",
              observed = "all refused", rows = 1 }, function()
      assert.same({}, d.manager:session_scope(function(s) return roles.check(s, app) end))
      assert.equal(app, appm:execute("select current_user::text as u")[1].u)
      -- What the app does do: append, and set merkle_root_id once.
      local p = models.Principal { name = "agent-least-priv", principal_type = "agent", owner = "o" }
      local e = models.LedgerEvent { agent_id = p.principal_id, resource_type = "r", quantity = "1", cost = "0.5" }
      appm:session_scope(function(s)
        s:add(p)
        s:add(e)
      end)
      local root = models.MerkleRoot { merkle_root = ("a"):rep(64), signature = "sig", event_count = 1,
                                       first_event_id = e.event_id, last_event_id = e.event_id }
      appm:session_scope(function(s) s:add(root) end)
      appm:execute("update ledger_events set merkle_root_id = $1 where event_id = $2", root.root_id, e.event_id)
      local function refused(sql, states, ...)
        local ok, err = pcall(appm.execute, appm, sql, ...)
        assert.is_false(ok, sql)
        local want = {}
        for st in states:gmatch("%S+") do want[st] = true end
        assert.is_true(want[err.sqlstate] == true, sql .. " -> " .. tostring(err.sqlstate) .. " " .. tostring(err.message))
      end
      refused("update ledger_events set merkle_root_id = null where event_id = $1", "42501 CA001", e.event_id)
      refused("update ledger_events set merkle_root_id = $1 where event_id = $2", "CA001", core.uuid4(), e.event_id)
      refused("update ledger_events set cost = 0", "42501")
      refused("delete from ledger_events", "42501")
      refused("truncate ledger_events", "42501")
      refused("delete from audit_logs", "42501")
      refused("truncate authority_ledger_events", "42501")
      -- the partitions (revision 3) are closed too
      for _, part in ipairs(d.manager:execute([[select c.relname::text as name from pg_inherits i
          join pg_class c on c.oid = i.inhrelid join pg_class p on p.oid = i.inhparent
          where p.relname = 'ledger_events']])) do
        refused("delete from " .. sqltext.quote_ident(part.name), "42501")
        refused("alter table " .. sqltext.quote_ident(part.name) .. " disable trigger all", "42501")
      end
      refused("select caracal_ledger_partition('ledger_events', date '2030-01-01')", "42501")
      refused("insert into ledger_events(agent_id, resource_type, quantity, cost) values ($1, 'r', 1, 1) " ..
              "on conflict (event_id, \"timestamp\") do update set cost = 0", "42501", p.principal_id)
      refused("alter table ledger_events disable trigger user", "42501")
      refused("alter table ledger_events disable trigger ledger_events_append_only", "42501")
      refused("alter table ledger_events add column x int", "42501")
      refused("drop table ledger_events", "42501")
      refused("set session_replication_role = replica", "42501")
      refused("set role " .. sqltext.quote_ident(owner), "42501")
      refused("create table public.shadow(x int)", "42501")
      refused("create function public.lower(text) returns text language sql as 'select $1'", "42501")
      refused("create role evil", "42501")
      refused("alter function caracal_ledger_append_only() owner to " .. sqltext.quote_ident(app), "42501")
      -- The row is as it was.
      local row = appm:execute("select cost, merkle_root_id from ledger_events where event_id = $1", e.event_id)[1]
      assert.equal("0.500000", tostring(row.cost))
      assert.equal(root.root_id, row.merkle_root_id)
      -- The guards fire even for a superuser under session_replication_role = replica.
      local ok, err = pcall(d.manager.session_scope, d.manager, function(s)
        s:execute("set local session_replication_role = replica")
        s:execute("delete from ledger_events")
      end)
      assert.is_false(ok)
      assert.equal("CA001", err.sqlstate)
      -- And the migrator can still migrate, as the owner.
      local mig = db.create_connection_manager({ url = d.url:gsub("://[^@/]*@", "://" .. migrator .. "@"),
                                                 options = "-c role=" .. owner, pool_size = 1 })
      mig:execute("alter table ledger_events add column if not exists scratch int")
      mig:execute("alter table ledger_events drop column scratch")
      mig:close()
      -- Running the set-up again changes nothing.
      d.manager:session_scope(function(s) roles.setup(s, { owner = owner, app = app, migrator = migrator }) end)
      assert.same({}, d.manager:session_scope(function(s) return roles.check(s, app) end))
      assert.matches("CREATE ROLE \"caracal_owner\" NOLOGIN", roles.sql({ database = "caracal" }), 1, true)
    end)
  end)
end)
