-- The migration runner (caracal.migrate) against the throwaway cluster.
-- Every test that touches a database makes its own (`fresh`), so nothing
-- here collides with the other spec files sharing the `caracal` database.
local core = require "caracal.core"
local db = require "caracal.db"
local migrate = require "caracal.migrate"
local scripts = require "caracal.migrate.scripts"
local testdb = require "testdb"

local ROOT = os.getenv("CARACAL_ROOT") or "."
local MIGRATIONS = ROOT .. "/migrations"
local REV1, REV2, REV3 = "5f3c8a1e9b20", "a7d4e2c91f06", "c3b8f1d27a94"

---------------------------------------------------------------------------
-- Helpers: fresh databases, temp migration folders, subprocesses
---------------------------------------------------------------------------

local dbs = {}
-- A new empty database and a manager on it (dropped in teardown).
local function fresh(prefix)
  local d = testdb.fresh_database("mig_" .. (prefix or "t"), { pool_size = 3, max_overflow = 2, pool_timeout = 5 })
  dbs[#dbs + 1] = d
  return d
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc
end
local q = testdb.shell_quote

local temps = {}
local function tmpdir()
  local d = sh("mktemp -d /tmp/caracal-mig.XXXXXX"):match("%S+")
  temps[#temps + 1] = d
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- A migrations folder from a list of {rev=, up=, down=, extra=} (each
-- revising the one before); returns the folder and the file paths.
local function make_dir(list, dir)
  dir = dir or (tmpdir() .. "/migrations")
  sh("mkdir -p " .. q(dir))
  local paths = {}
  local prev
  for i, m in ipairs(list) do
    local down = m.down_revision
    if down == nil then down = prev end
    local text = string.format("return {\n  revision = %q,\n  down_revision = %s,\n  message = %q,\n%s" ..
      "  up = function(op)\n%s\n  end,\n  down = function(op)\n%s\n  end,\n}\n",
      m.rev, down and string.format("%q", down) or "nil", m.message or ("step " .. i), m.extra or "",
      m.up or "", m.down or "")
    local path = string.format("%s/%04d_%s_%s.lua", dir, m.seq or i, m.rev, m.slug or ("step" .. i))
    write(path, text)
    paths[i] = path
    prev = m.rev
  end
  return dir, paths
end

-- Five small revisions, each making table tN.
local function five(extra)
  local list = {}
  for i = 1, 5 do
    list[i] = { rev = "c0000000000" .. i,
      up = string.format('    op.create_table("t%d", { { "id", "INTEGER", primary_key = true } })', i),
      down = string.format('    op.drop_table("t%d")', i) }
  end
  for i, e in pairs(extra or {}) do for k, v in pairs(e) do list[i][k] = v end end
  return list
end

local function copy_migrations()
  local dir = tmpdir() .. "/migrations"
  sh("mkdir -p " .. q(dir) .. " && cp " .. q(MIGRATIONS) .. "/*.lua " .. q(dir))
  return dir
end

-- The line in a file holding a marker.
local function line_of(path, marker)
  local n = 0
  for l in (read(path) .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if l:find(marker, 1, true) then return n end
  end
end

local function history_rows(d)
  local out = {}
  for i, r in ipairs(d.sql("select revision::text as revision, dirty from caracal_migrations order by revision")) do
    out[i] = { revision = r.revision, dirty = r.dirty }
  end
  return out
end

local function revs(rows)
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = r.revision end
  table.sort(out)
  return out
end

local function raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return err
end

-- A subprocess running migrate.upgrade with this process's Lua paths.
local RUNNER = [[
local url, dir, timeout = ...
local db = require "caracal.db"
local migrate = require "caracal.migrate"
local m = db.create_connection_manager({ url = url, pool_size = 2, max_overflow = 0 })
local ok, res = pcall(migrate.upgrade, m, "head", { dir = dir, lock_timeout = tonumber(timeout) })
if ok then print("applied " .. #res.applied) else print("failed " .. migrate.format_error(res)) end
m:close()
os.exit(ok and 0 or 1)
]]
local function lua_cmd(script_path, ...)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = q(a) end
  -- The interpreter running these specs (lua5.4, or the sanitized host).
  return string.format("LUA_PATH=%s LUA_CPATH=%s %s %s %s", q(package.path), q(package.cpath),
    os.getenv("CARACAL_LUA") or "lua5.4", q(script_path), table.concat(args, " "))
end

teardown(function()
  for _, d in ipairs(dbs) do pcall(d.drop) end
  for _, t in ipairs(temps) do sh("rm -rf " .. q(t)) end
end)

---------------------------------------------------------------------------

describe("migration scripts", function()
  it("normalises line endings, BOM and trailing whitespace before checksumming", function()
    local base = "return {\n  x = 1,\n}\n"
    assert.equal(scripts.checksum(base), scripts.checksum("\239\187\191return {\r\n  x = 1,   \r\n}\r\n\r\n\n"))
    assert.equal(scripts.checksum(base), scripts.checksum("return {\r  x = 1,\t\r}"))
    assert.are_not.equal(scripts.checksum(base), scripts.checksum("return {\n  x = 2,\n}\n"))
    assert.are_not.equal(scripts.checksum(base), scripts.checksum("return {\n    x = 1,\n}\n"))
  end)

  it("loads the project's three revisions as one chain", function()
    local s = migrate.load({ dir = MIGRATIONS })
    assert.equal(3, s:count())
    assert.equal(REV1, s:at(1).revision)
    assert.equal(REV2, s:at(2).revision)
    assert.equal(REV3, s:at(3).revision)
    assert.equal(REV1, s:at(2).down_revision)
    assert.equal(REV2, s:at(3).down_revision)
    assert.equal(REV3, s.head.revision)
    assert.same({ alembic = "h7i8j9k0l1m2", tables = s:at(1).adopt.tables }, s:at(1).adopt)
  end)

  it("resolves head, base, ids, unique prefixes, +N and -N", function()
    local dir = make_dir(five())
    local s = migrate.load({ dir = dir })
    assert.equal(5, s:resolve("head"))
    assert.equal(0, s:resolve("base"))
    assert.equal(3, s:resolve("c00000000003"))
    assert.equal(3, s:resolve("+2", 1))
    assert.equal(1, s:resolve("-2", 3))
    assert.matches("ambiguous: c00000000001, c00000000002", raises(s.resolve, s, "c000").message, 1, true)
    assert.matches("unknown revision 'ffff'", raises(s.resolve, s, "ffff").message, 1, true)
    assert.matches("out of range", raises(s.resolve, s, "+9", 1).message, 1, true)
  end)

  it("refuses malformed file names, duplicate ids, missing parents and bad scripts", function()
    local dir = make_dir(five())
    write(dir .. "/add_users.lua", "return {}")
    local err = raises(migrate.load, { dir = dir })
    assert.equal("invalid_script", err.kind)
    assert.matches("add_users.lua: malformed migration file name", err.message, 1, true)

    dir = make_dir(five())
    write(dir .. "/0009_c00000000002_again.lua", read(dir .. "/0002_c00000000002_step2.lua"))
    err = raises(migrate.load, { dir = dir })
    assert.matches("duplicate revision c00000000002: migrations/0002_c00000000002_step2.lua and " ..
                   "migrations/0009_c00000000002_again.lua", err.message, 1, true)

    dir = make_dir({ { rev = "aa01" }, { rev = "aa02", down_revision = "ffff" } })
    err = raises(migrate.load, { dir = dir })
    assert.matches("0002_aa02_step2.lua revises ffff, which is not among the scripts", err.message, 1, true)

    dir = make_dir({ { rev = "aa01" } })
    write(dir .. "/0002_aa02_x.lua", 'return { revision = "aa03", message = "m", up = function() end, down = function() end }')
    assert.matches("the file name says revision aa02 but the script says aa03",
      raises(migrate.load, { dir = dir }).message, 1, true)

    dir = make_dir({ { rev = "aa01" } })
    write(dir .. "/0002_aa02_x.lua", 'return { revision = "aa02", down_revision = "aa01", message = "m", up = function() end }')
    assert.matches("up and down must both be functions", raises(migrate.load, { dir = dir }).message, 1, true)

    dir = make_dir({ { rev = "aa01" } })
    write(dir .. "/0002_aa02_x.lua", 'return { revision = "aa02", down_revison = "aa01", message = "m", ' ..
      'up = function() end, down = function() end }')
    assert.matches("unknown field 'down_revison'", raises(migrate.load, { dir = dir }).message, 1, true)

    dir = make_dir({ { rev = "aa01" } })
    write(dir .. "/0002_aa02_x.lua", "return {")
    assert.matches("0002_aa02_x.lua:1:", raises(migrate.load, { dir = dir }).message, 1, true)
  end)

  it("runs scripts in a sandbox without io, os.execute, require or load", function()
    local dir = make_dir({ { rev = "aa01" } })
    write(dir .. "/0002_aa02_x.lua", 'return { revision = "aa02", down_revision = "aa01", ' ..
      'message = tostring(io) .. tostring(os.execute) .. tostring(require) .. tostring(load) .. tostring(debug), ' ..
      'up = function() end, down = function() end }')
    assert.equal("nilnilnilnilnil", migrate.load({ dir = dir }):at(2).message)
  end)

  it("names both files when two scripts revise the same revision (two heads)", function()
    local dir = make_dir(five())
    write(dir .. "/0006_dd0000000001_left.lua", 'return { revision = "dd0000000001", down_revision = "c00000000005", ' ..
      'message = "left", up = function() end, down = function() end }')
    write(dir .. "/0006_ee0000000001_right.lua", 'return { revision = "ee0000000001", down_revision = "c00000000005", ' ..
      'message = "right", up = function() end, down = function() end }')
    local err = raises(migrate.load, { dir = dir })
    assert.equal("multiple_heads", err.kind)
    assert.matches("multiple heads: 0006 dd0000000001 (migrations/0006_dd0000000001_left.lua) and " ..
      "0006 ee0000000001 (migrations/0006_ee0000000001_right.lua) all revise 0005 c00000000005", err.message, 1, true)
    local heads, problems = migrate.heads({ dir = dir })
    assert.equal(2, #heads)
    assert.equal(1, #problems)
  end)

  it("writes a new revision from the template, linked to the head", function()
    local dir = make_dir(five())
    local path, rev = migrate.revision("Add the 'widgets' table", { dir = dir })
    assert.matches("^[0-9a-f]+$", rev)
    assert.equal(12, #rev)
    assert.equal(dir .. "/0006_" .. rev .. "_add_the_widgets_table.lua", path)
    local s = migrate.load({ dir = dir })
    assert.equal(rev, s.head.revision)
    assert.equal("c00000000005", s.head.down_revision)
    assert.equal("Add the 'widgets' table", s.head.message)
    assert.is_true(s.head.transaction)
    assert.matches("one-line message", raises(migrate.revision, "two\nlines", { dir = dir }).message, 1, true)
  end)

  it("builds exactly this SQL for each op", function()
    local ops = require "caracal.migrate.ops"
    local sqltext = require "caracal.migrate.sqltext"
    local sent = {}
    local op = ops.new { run = function(sql) sent[#sent + 1] = sql return { columns = {} } end,
                         quote = sqltext.quote_ident, transactional = true }
    op.create_table("items", {
      { "id", "BIGSERIAL", primary_key = true },
      { "owner_id", "UUID", references = "users.id", on_delete = "cascade" },
      { "code", "VARCHAR(20)", unique = true },
      { "note", "TEXT", nullable = true, default = "''" },
    }, { checks = { { name = "ck_items_code", condition = "code <> ''" } } })
    op.add_column("items", { "qty", "INTEGER", default = "0" })
    op.drop_column("items", "qty", { if_exists = true })
    op.alter_column("items", "note", { type = "VARCHAR(100)", using = "left(note, 100)", nullable = false, default = false })
    op.create_index("ix_items_code_lower", "items", { { expression = "lower(code)" }, "id" }, { where = "note <> ''" })
    op.drop_index("ix_items_code_lower", { if_exists = true })
    op.create_foreign_key("fk_items_owner", "items", "owner_id", "users", "id", { on_delete = "SET NULL", not_valid = true })
    op.create_check_constraint("ck_items_note", "items", "length(note) > 0")
    op.create_unique_constraint("uq_items_owner_code", "items", { "owner_id", "code" })
    op.drop_constraint("uq_items_owner_code", "items")
    op.rename_table("items", "things")
    op.drop_table("things", { cascade = true })
    assert.same({
      'CREATE TABLE "items" (\n    "id" BIGSERIAL NOT NULL,\n    "owner_id" UUID NOT NULL,\n' ..
        '    "code" VARCHAR(20) NOT NULL,\n    "note" TEXT DEFAULT \'\',\n    PRIMARY KEY ("id"),\n' ..
        '    UNIQUE ("code"),\n    FOREIGN KEY ("owner_id") REFERENCES "users" ("id") ON DELETE CASCADE,\n' ..
        '    CONSTRAINT "ck_items_code" CHECK (code <> \'\')\n)',
      'ALTER TABLE "items" ADD COLUMN "qty" INTEGER NOT NULL DEFAULT 0',
      'ALTER TABLE "items" DROP COLUMN IF EXISTS "qty"',
      'ALTER TABLE "items" ALTER COLUMN "note" TYPE VARCHAR(100) USING left(note, 100), ' ..
        'ALTER COLUMN "note" DROP DEFAULT, ALTER COLUMN "note" SET NOT NULL',
      'CREATE INDEX "ix_items_code_lower" ON "items" ((lower(code)), "id") WHERE note <> \'\'',
      'DROP INDEX IF EXISTS "ix_items_code_lower"',
      'ALTER TABLE "items" ADD CONSTRAINT "fk_items_owner" FOREIGN KEY ("owner_id") REFERENCES "users" ("id") ' ..
        'ON DELETE SET NULL NOT VALID',
      'ALTER TABLE "items" ADD CONSTRAINT "ck_items_note" CHECK (length(note) > 0)',
      'ALTER TABLE "items" ADD CONSTRAINT "uq_items_owner_code" UNIQUE ("owner_id", "code")',
      'ALTER TABLE "items" DROP CONSTRAINT "uq_items_owner_code"',
      'ALTER TABLE "items" RENAME TO "things"',
      'DROP TABLE "things" CASCADE',
    }, sent)
    assert.has_error(function() op.add_column("t", { "c", "INT", nullabel = true }) end, "column: unknown option 'nullabel'")
    assert.has_error(function() op.add_column("t", { "c", "INT", on_delete = "EXPLODE", references = "u.id" }) end)
    assert.has_error(function() op.create_table("t", { { string.rep("c", 64), "INT" } }) end)
  end)

  it("quotes identifiers and refuses unsafe types before any SQL is made", function()
    local sqltext = require "caracal.migrate.sqltext"
    assert.equal('"we""ird; drop"', sqltext.quote_ident('we"ird; drop'))
    assert.matches("PostgreSQL allows 63", raises(sqltext.quote_ident, string.rep("x", 64)), 1, true)
    assert.matches("empty name", raises(sqltext.quote_ident, ""), 1, true)
    assert.matches("invalid UTF-8", raises(sqltext.quote_ident, "\195\40"), 1, true)
    for _, t in ipairs({ "VARCHAR(255)", "NUMERIC(20,6)", "TIMESTAMP WITHOUT TIME ZONE", "double precision",
                         "text[]", "public.mood", "timestamp(3) with time zone" }) do
      assert.equal(t, sqltext.check_type(t))
    end
    for _, t in ipairs({ "int; drop table x", "int default 5", "int --", "text'", "int)", "varchar(a)" }) do
      assert.has_error(function() sqltext.check_type(t) end)
    end
  end)
end)

describe("migrate --sql", function()
  it("prints BEGIN/COMMIT per revision with the history statements, and connects to nothing", function()
    local dir = make_dir({
      { rev = "ab01", message = "one", up = '    op.create_table("t1", { { "id", "INTEGER", primary_key = true }, { "note", "TEXT", nullable = true, default = "\'x\'" } })',
        down = '    op.drop_table("t1")' },
      { rev = "ab02", message = "two", up = '    op.create_index("ix_t1_note", "t1", "note", { unique = true, where = "note <> \'\'" })',
        down = '    op.drop_index("ix_t1_note")' },
    })
    local sql = migrate.upgrade(nil, "head", { dir = dir, sql = true })
    local body = sql:match("COMMIT;\n\n(.*)$")
    local function ins(rev, down, msg, file)
      local s = migrate.load({ dir = dir }).by_rev[rev]
      return string.format("INSERT INTO caracal_migrations (revision, down_revision, message, file, checksum, " ..
        "script, applied_by, duration_ms, dirty) VALUES ('%s', %s, '%s', '%s', '%s', %s, current_user || ' (' || " ..
        "'caracal db --sql by %s' || ')', (extract(epoch from clock_timestamp() - now()) * 1000)::integer, false);",
        rev, down, msg, file, s.checksum, require("caracal.migrate.sqltext").literal(s.source),
        require("caracal.migrate.history").client())
    end
    assert.equal(table.concat({
      "-- Running upgrade base -> ab01: one (0001_ab01_step1.lua)",
      "BEGIN;",
      "SET LOCAL lock_timeout = '10s';",
      'CREATE TABLE "t1" (\n    "id" INTEGER NOT NULL,\n    "note" TEXT DEFAULT \'x\',\n    PRIMARY KEY ("id")\n);',
      ins("ab01", "NULL", "one", "0001_ab01_step1.lua"),
      "COMMIT;",
      "",
      "-- Running upgrade ab01 -> ab02: two (0002_ab02_step2.lua)",
      "BEGIN;",
      "SET LOCAL lock_timeout = '10s';",
      'CREATE UNIQUE INDEX "ix_t1_note" ON "t1" ("note") WHERE note <> \'\';',
      ins("ab02", "'ab01'", "two", "0002_ab02_step2.lua"),
      "COMMIT;",
      "",
    }, "\n"), body)
    assert.matches("^%-%- caracal db upgrade head %-%-sql.-\nBEGIN;\nCREATE TABLE IF NOT EXISTS caracal_migrations", sql)

    local down = migrate.downgrade(nil, "ab02:base", { dir = dir, sql = true })
    assert.matches("BEGIN;\nSET LOCAL lock_timeout = '10s';\nDROP INDEX \"ix_t1_note\";\n" ..
      "DELETE FROM caracal_migrations WHERE revision = 'ab02';\nCOMMIT;", down, 1, true)
    assert.matches("DROP TABLE \"t1\";\nDELETE FROM caracal_migrations WHERE revision = 'ab01';\nCOMMIT;", down, 1, true)
  end)

  it("needs FROM:TO for a downgrade and --destructive to drop the baseline's tables", function()
    local err = raises(migrate.downgrade, nil, "base", { dir = MIGRATIONS, sql = true })
    assert.equal("usage", err.kind)
    assert.matches("needs a range FROM:TO", err.message, 1, true)
    err = raises(migrate.downgrade, nil, "head:base", { dir = MIGRATIONS, sql = true })
    assert.equal("destructive", err.kind)
    assert.is_string(migrate.downgrade(nil, "head:" .. REV1, { dir = MIGRATIONS, sql = true }))
    assert.is_string(migrate.downgrade(nil, "head:base", { dir = MIGRATIONS, sql = true, destructive = true }))
    assert.matches("need a database", raises(migrate.upgrade, nil, "+1", { dir = MIGRATIONS, sql = true }).message, 1, true)
  end)

  it("gives, applied with psql, the same schema and history as an online upgrade", function()
    local online, offline = fresh("online"), fresh("offline")
    migrate.upgrade(online.manager, "head", { dir = MIGRATIONS })
    local file = tmpdir() .. "/up.sql"
    write(file, migrate.upgrade(nil, "head", { dir = MIGRATIONS, sql = true }))
    local out, rc = sh(string.format("psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U caracal -d %s -f %s",
      testdb.port, offline.name, q(file)))
    assert.equal(0, rc, out)
    assert.same(migrate.snapshot(online.manager), migrate.snapshot(offline.manager))
    assert.same({ REV1, REV2, REV3 }, revs(history_rows(offline)))
    assert.is_true(migrate.check(offline.manager, { dir = MIGRATIONS }))
    -- And back down, offline too.
    write(file, migrate.downgrade(nil, "head:base", { dir = MIGRATIONS, sql = true, destructive = true }))
    out, rc = sh(string.format("psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U caracal -d %s -f %s",
      testdb.port, offline.name, q(file)))
    assert.equal(0, rc, out)
    assert.same({}, migrate.snapshot(offline.manager))
    assert.equal(0, offline.scalar("select count(*) from caracal_migrations"))
    online.drop()
    offline.drop()
  end)
end)

describe("migrate (online)", function()
  it("upgrade head, downgrade base, upgrade head leaves an identical schema", function()
    local d = fresh("roundtrip")
    local res = migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    assert.equal(3, #res.applied)
    assert.is_nil(res.from)
    assert.equal(REV3, res.to)
    local at_head = migrate.snapshot(d.manager)
    assert.is_true(#at_head > 100)

    migrate.downgrade(d.manager, REV1, { dir = MIGRATIONS })
    local at_one = migrate.snapshot(d.manager)
    migrate.downgrade(d.manager, "base", { dir = MIGRATIONS, destructive = true })
    assert.same({}, migrate.snapshot(d.manager))
    assert.equal(0, d.scalar("select count(*) from caracal_migrations"))

    migrate.upgrade(d.manager, REV1, { dir = MIGRATIONS })
    assert.same(at_one, migrate.snapshot(d.manager))
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    assert.same(at_head, migrate.snapshot(d.manager))
    assert.same({ REV1, REV2, REV3 }, revs(history_rows(d)))
    d.drop()
  end)

  it("records revision, checksum, script text, applied_at, applied_by and duration", function()
    local d = fresh("history")
    local before = d.scalar("select now()")
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    local s = migrate.load({ dir = MIGRATIONS })
    local rows = d.sql("select revision::text as revision, down_revision::text as down_revision, message, file, " ..
      "checksum, script, applied_at, applied_by, duration_ms, dirty from caracal_migrations order by applied_at")
    assert.equal(3, #rows)
    for i, r in ipairs(rows) do
      local sc = s:at(i)
      assert.equal(sc.revision, r.revision)
      assert.equal(sc.down_revision, r.down_revision)
      assert.equal(sc.message, r.message)
      assert.equal(sc.file, r.file)
      assert.equal(core.sha256_hex(scripts.normalise(read(MIGRATIONS .. "/" .. sc.file))), r.checksum)
      assert.equal(read(MIGRATIONS .. "/" .. sc.file), r.script)
      assert.is_true(r.applied_at >= before)
      assert.matches("^caracal %(.+@.+%)$", r.applied_by)
      assert.equal("integer", math.type(r.duration_ms))
      assert.is_true(r.duration_ms >= 0 and r.duration_ms < 60000)
      assert.is_false(r.dirty)
    end
    local info = migrate.current(d.manager, { dir = MIGRATIONS })
    assert.equal(REV3, info.revision)
    assert.equal(REV3, info.head)
    assert.equal(0, info.pending)
    d.drop()
  end)

  it("rolls a failing revision back completely and reports file, line, SQLSTATE and SQL", function()
    local d = fresh("fail")
    local dir, paths = make_dir(five({
      [3] = { up = '    op.create_table("t3", { { "id", "INTEGER", primary_key = true } })\n' ..
                   '    op.execute("insert into t3 values (1)")\n' ..
                   '    op.execute([[select id\n  from no_such_table]]) -- FAILS HERE' },
    }))
    local events = {}
    local err = raises(migrate.upgrade, d.manager, "head", { dir = dir,
      progress = function(ev) events[#events + 1] = ev.event .. (ev.script and (" " .. ev.script.revision) or "") end })
    assert.equal("migration_failed", err.kind)
    assert.equal("42P01", err.sqlstate)
    assert.equal("c00000000003", err.revision)
    assert.equal(line_of(paths[3], "op.execute([[select id"), err.line)
    assert.equal("migrations/0003_c00000000003_step3.lua:" .. err.line, err.where)
    assert.equal("select id\n  from no_such_table", err.sql)
    assert.equal("rolled_back", err.outcome)
    local text = migrate.format_error(err)
    assert.matches("^migrations/0003_c00000000003_step3.lua:%d+: ERROR 42P01: relation \"no_such_table\" does not exist\n" ..
      "LINE 2:   from no_such_table\n +%^\n", text)
    assert.matches("was rolled back completely; the database stays at c00000000002", text, 1, true)
    -- Nothing of #3: no table, no history row; #1 and #2 are in place.
    assert.same({ "c00000000001", "c00000000002" }, revs(history_rows(d)))
    assert.is_nil(d.scalar("select to_regclass('t3')::text"))
    assert.equal("t2", d.scalar("select to_regclass('t2')::text"))
    assert.same({ "start c00000000001", "done c00000000001", "start c00000000002", "done c00000000002",
                  "start c00000000003", "failed c00000000003" }, events)
    assert.equal("c00000000002", migrate.current(d.manager, { dir = dir }).revision)
    d.drop()
  end)

  it("reports a Lua error in up() at its line, and refuses scripts that control the transaction", function()
    local d = fresh("luaerr")
    local dir, paths = make_dir({
      { rev = "aa01", up = '    op.create_table("t1", { { "id", "INTEGER" } })\n    local x = nil\n    x.boom() -- LUA' },
    })
    local err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal(line_of(paths[1], "-- LUA"), err.line)
    assert.matches("attempt to index a nil value", err.message)
    assert.is_nil(d.scalar("select to_regclass('t1')::text"))

    dir, paths = make_dir({
      { rev = "aa01", up = '    op.create_table("t1", { { "id", "INTEGER" } })\n    op.execute("commit; create table t2 (x int)") -- TX' },
    })
    err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal(line_of(paths[1], "-- TX"), err.line)
    assert.matches("migrations must not control transactions themselves (found 'commit'", err.message, 1, true)
    assert.is_nil(d.scalar("select to_regclass('t1')::text"))

    dir = make_dir({
      { rev = "aa01", up = '    op.create_table("t1", { { "id", "INTEGER" } })\n' ..
                           '    op.create_index("ix_t1", "t1", "id", { concurrently = true })' },
    })
    err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.matches("'create index concurrently \"ix_t1\" on \"t1\" \"id\"' cannot run inside a transaction",
      err.message, 1, true)
    assert.is_nil(d.scalar("select to_regclass('t1')::text"))
    assert.equal(0, d.scalar("select count(*) from caracal_migrations"))
    d.drop()
  end)

  it("runs a non-transactional revision in autocommit, marks it dirty on failure, and force clears it", function()
    local d = fresh("dirty")
    local dir = make_dir({
      { rev = "aa01", up = '    op.create_table("t1", { { "id", "INTEGER" } })', down = '    op.drop_table("t1")' },
      { rev = "aa02", extra = "  transaction = false,\n",
        up = '    op.create_index("ix_t1_id", "t1", "id", { concurrently = true })\n    op.execute("select * from nope")',
        down = '    op.drop_index("ix_t1_id", { concurrently = true })' },
      { rev = "aa03", up = '    op.create_table("t3", { { "id", "INTEGER" } })', down = '    op.drop_table("t3")' },
    })
    local err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal("dirty", err.outcome)
    assert.matches("caracal db force aa02", err.outcome_message, 1, true)
    -- The index was built (autocommit) and the revision is recorded dirty.
    assert.equal("ix_t1_id", d.scalar("select to_regclass('ix_t1_id')::text"))
    assert.same({ { revision = "aa01", dirty = false }, { revision = "aa02", dirty = true } }, history_rows(d))

    err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal("schema_dirty", err.kind)
    assert.matches("`caracal db force aa02` if the revision's changes are all in place, or `caracal db force aa01`",
      err.message, 1, true)
    local ok, report = migrate.check(d.manager, { dir = dir })
    assert.is_false(ok)
    assert.equal("aa02", report.dirty)
    assert.equal("schema_dirty", raises(migrate.check_schema_version_on_startup, d.manager, { dir = dir }).kind)

    migrate.force(d.manager, "aa02", { dir = dir })
    assert.same({ { revision = "aa01", dirty = false }, { revision = "aa02", dirty = false } }, history_rows(d))
    local res = migrate.upgrade(d.manager, "head", { dir = dir })
    assert.equal(1, #res.applied)
    -- Down through the non-transactional revision works too.
    migrate.downgrade(d.manager, "aa01", { dir = dir })
    assert.is_nil(d.scalar("select to_regclass('ix_t1_id')::text"))
    assert.same({ { revision = "aa01", dirty = false } }, history_rows(d))
    d.drop()
  end)

  it("detects a script edited after it was applied, but not a change of line endings", function()
    local d = fresh("drift")
    local dir = copy_migrations()
    migrate.upgrade(d.manager, REV1, { dir = dir })
    local file = dir .. "/0001_5f3c8a1e9b20_v05_baseline.lua"
    local original = read(file)
    local stored = scripts.checksum(original)

    write(file, (original:gsub("\n", "\r\n")) .. "\r\n\r\n")
    assert.is_true((migrate.check(d.manager, { dir = dir }) == false)) -- pending, but no drift
    local _, report = migrate.check(d.manager, { dir = dir })
    assert.same({}, report.drift)

    write(file, (original:gsub('"VARCHAR%(4000%)"', '"VARCHAR(4001)"')))
    local edited = scripts.checksum(read(file))
    local ok, rep = migrate.check(d.manager, { dir = dir })
    assert.is_false(ok)
    assert.equal(1, #rep.drift)
    assert.equal(REV1, rep.drift[1].revision)
    assert.equal(stored, rep.drift[1].stored)
    assert.equal(edited, rep.drift[1]["local"])
    assert.equal(line_of(file, "VARCHAR(4001)"), rep.drift[1].line)
    assert.matches("stored checksum " .. stored .. ", local " .. edited, rep.messages[1], 1, true)

    local err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal("drift", err.kind)
    assert.matches("nothing was upgraded", err.hint, 1, true)
    assert.same({ REV1 }, revs(history_rows(d)))

    -- Accepting the edit is explicit and audited; then upgrade proceeds.
    migrate.accept(d.manager, REV1:sub(1, 6), "widened private_key_pem on purpose", { dir = dir })
    local row = d.sql("select checksum, previous_checksum, drift_reason, drift_accepted_by from caracal_migrations")[1]
    assert.equal(edited, row.checksum)
    assert.equal(stored, row.previous_checksum)
    assert.equal("widened private_key_pem on purpose", row.drift_reason)
    assert.matches("^caracal %(", row.drift_accepted_by)
    migrate.upgrade(d.manager, "head", { dir = dir })
    assert.is_true(migrate.check(d.manager, { dir = dir }))

    -- The newest applied script deleted: the database is ahead of the scripts.
    os.remove(dir .. "/0003_c3b8f1d27a94_partitioned_ledgers.lua")
    err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal("schema_ahead", err.kind)
    assert.matches("the database is at revision " .. REV3 .. ", newer than the newest script here", err.message, 1, true)
    d.drop()
  end)

  it("refuses a downgrade that would drop rows unless destructive, naming tables and counts", function()
    local d = fresh("destructive")
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    d.sql("insert into principals (name, principal_type, owner) values ('a', 'agent', 'o'), ('b', 'agent', 'o')")
    d.sql("insert into ledger_events (agent_id, resource_type, quantity, cost) " ..
          "select principal_id, 'api', 1, 0.5 from principals")
    local err = raises(migrate.downgrade, d.manager, "base", { dir = MIGRATIONS })
    assert.equal("destructive", err.kind)
    assert.equal("downgrade to base would drop data: principals (2 rows), ledger_events (2 rows); " ..
      "pass --destructive (destructive = true) to do it anyway", err.message)
    assert.same({ REV1, REV2, REV3 }, revs(history_rows(d)))
    -- Down to revision 1 keeps every row.
    migrate.downgrade(d.manager, REV1, { dir = MIGRATIONS })
    assert.equal(2, d.scalar("select count(*) from ledger_events"))
    local cancelled = migrate.downgrade(d.manager, "base", { dir = MIGRATIONS, destructive = true,
      confirm = function(from, to)
        assert.equal("0001 " .. REV1 .. " (v0.5 baseline)", from)
        assert.equal("base", to)
        return false
      end })
    assert.is_true(cancelled.cancelled)
    assert.equal(2, d.scalar("select count(*) from ledger_events"))
    migrate.downgrade(d.manager, "base", { dir = MIGRATIONS, destructive = true })
    assert.is_nil(d.scalar("select to_regclass('ledger_events')::text"))
    d.drop()
  end)

  it("serialises concurrent runners: each revision is applied exactly once", function()
    local d = fresh("concurrent")
    local dir = make_dir(five({ [1] = { up = '    op.execute("select pg_sleep(0.8)")\n' ..
      '    op.create_table("t1", { { "id", "INTEGER", primary_key = true } })' } }))
    local tmp = tmpdir()
    write(tmp .. "/runner.lua", RUNNER)
    local cmds = {}
    for i = 1, 3 do
      cmds[i] = lua_cmd(tmp .. "/runner.lua", d.url, dir, "20") .. " > " .. q(tmp .. "/out" .. i) .. " 2>&1"
    end
    local _, rc = sh("( " .. table.concat(cmds, " & ") .. " & wait ) ")
    assert.equal(0, rc)
    local applied, outputs = 0, {}
    for i = 1, 3 do
      local out = read(tmp .. "/out" .. i)
      outputs[#outputs + 1] = out
      local n = tonumber(out:match("applied (%d+)"))
      assert.is_number(n, out)
      applied = applied + n
    end
    assert.equal(5, applied, table.concat(outputs, "\n"))
    assert.same({ "c00000000001", "c00000000002", "c00000000003", "c00000000004", "c00000000005" },
      revs(history_rows(d)))
    d.drop()
  end)

  it("times out waiting for the lock and names the holder", function()
    local d = fresh("locked")
    local holder = db.create_connection_manager({ url = d.url, pool_size = 1, application_name = "spec lock holder" })
    local s = holder:session()
    local conn = s:connection()
    conn:execute("select pg_advisory_lock($1::int8)", migrate.LOCK_KEY)
    local pid = conn:backend_pid()
    local waited
    local t0 = core.utcnow():micros()
    local err = raises(migrate.upgrade, d.manager, "head", { dir = MIGRATIONS, lock_timeout = 0.5,
      progress = function(ev) if ev.event == "lock_wait" then waited = ev.holder end end })
    local elapsed = (core.utcnow():micros() - t0) / 1e6
    assert.equal("locked", err.kind)
    assert.is_true(elapsed >= 0.5 and elapsed < 5, tostring(elapsed))
    assert.matches("could not get the migration lock within 0.5 s: it is held by pid " .. pid ..
      " (application 'spec lock holder', user caracal, client 127.0.0.1", err.message, 1, true)
    assert.equal(pid, waited.pid)
    assert.equal(0, d.scalar("select count(*) from pg_class where relname = 'caracal_migrations'"))
    conn:execute("select pg_advisory_unlock($1::int8)", migrate.LOCK_KEY)
    s:close()
    holder:close()
    -- Released: the next runner proceeds, and its lock is gone afterwards.
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS, lock_timeout = 0.5 })
    assert.equal(0, d.scalar("select count(*) from pg_locks where locktype = 'advisory'"))
    d.drop()
  end)

  it("survives a runner killed mid-revision: the revision is absent and a re-run applies the rest once", function()
    local d = fresh("killed")
    local dir = make_dir(five({ [3] = { up = '    op.create_table("t3", { { "id", "INTEGER", primary_key = true } })\n' ..
      '    op.execute("select pg_sleep(case when to_regclass(\'slow_flag\') is null then 0 else 30 end)")' } }))
    d.sql("create table slow_flag (x int)")
    local tmp = tmpdir()
    write(tmp .. "/runner.lua", RUNNER)
    local pid = tonumber((sh(lua_cmd(tmp .. "/runner.lua", d.url, dir, "5") .. " > /dev/null 2>&1 & echo $!")))
    local backend
    for _ = 1, 100 do
      backend = d.scalar("select pid from pg_stat_activity where query like 'select pg_sleep(case%' and state = 'active'")
      if backend then break end
      sh("sleep 0.05")
    end
    assert.is_number(backend)
    sh("kill -9 " .. pid)
    d.sql("select pg_terminate_backend($1::int)", backend)
    d.sql("drop table slow_flag")
    assert.same({ "c00000000001", "c00000000002" }, revs(history_rows(d)))
    local res = migrate.upgrade(d.manager, "head", { dir = dir, lock_timeout = 10 })
    assert.equal(3, #res.applied)
    assert.same({ "c00000000001", "c00000000002", "c00000000003", "c00000000004", "c00000000005" },
      revs(history_rows(d)))
    d.drop()
  end)

  it("stamps a revision without running scripts, and refuses unversioned Caracal tables until stamped", function()
    local d = fresh("stamp")
    -- Revision 1's schema without any history: what a hand-made database looks like.
    migrate.upgrade(d.manager, REV1, { dir = MIGRATIONS })
    d.sql("drop table caracal_migrations")
    local err = raises(migrate.upgrade, d.manager, "head", { dir = MIGRATIONS })
    assert.equal("schema_unknown", err.kind)
    assert.matches("has Caracal tables (principals, execution_mandates, merkle_roots, ledger_events, " ..
      "authority_ledger_events, authority_policies, ledger_snapshots, audit_logs) but no recorded revision: " ..
      "if its schema is that of a revision, record it with `caracal db stamp <revision>`", err.message, 1, true)
    assert.equal("schema_unknown", raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS }).kind)
    migrate.stamp(d.manager, REV1, { dir = MIGRATIONS })
    assert.equal(REV1, migrate.current(d.manager, { dir = MIGRATIONS }).revision)
    assert.matches("^caracal %(stamped by ", d.scalar("select applied_by from caracal_migrations"))
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    migrate.stamp(d.manager, "base", { dir = MIGRATIONS })
    assert.equal(0, d.scalar("select count(*) from caracal_migrations"))
    d.drop()
  end)
end)

describe("check_schema_version_on_startup", function()
  it("passes at head and fails with the seed's message when behind or empty", function()
    local d = fresh("startup")
    local err = raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS })
    assert.is_true(core.is_error(err))
    assert.equal("schema_outdated", err.kind)
    assert.equal("Database schema is outdated! Current revision: none, Head revision: " .. REV3 ..
      ", Pending migrations: 3, run 'caracal db upgrade head'", err.message)
    migrate.upgrade(d.manager, REV2, { dir = MIGRATIONS })
    err = raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS })
    assert.equal("Database schema is outdated! Current revision: " .. REV2 .. ", Head revision: " .. REV3 ..
      ", Pending migrations: 1, run 'caracal db upgrade head'", err.message)
    assert.equal(1, err.pending)
    migrate.upgrade(d.manager, "head", { dir = MIGRATIONS })
    assert.is_true(migrate.check_schema_version_on_startup(d.manager, { dir = MIGRATIONS }))
    d.drop()
  end)

  it("fails distinctly when the database is ahead of the scripts or at an unknown revision", function()
    local d = fresh("ahead")
    local dir = copy_migrations()
    write(dir .. "/0004_f00000000003_newer.lua", 'return { revision = "f00000000003", down_revision = "' .. REV3 ..
      '", message = "newer", up = function(op) op.execute("select 1") end, down = function(op) end }')
    migrate.upgrade(d.manager, "head", { dir = dir })
    local err = raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS })
    assert.equal("schema_ahead", err.kind)
    assert.equal("Database schema is newer than this Caracal! Current revision: f00000000003, Head revision: " ..
      REV3 .. ": the database was upgraded by a newer version; run that version, or downgrade the database with it",
      err.message)
    assert.equal("schema_ahead", raises(migrate.upgrade, d.manager, "head", { dir = MIGRATIONS }).kind)

    -- A revision whose ancestry the scripts do not know at all.
    d.sql("delete from caracal_migrations where revision <> 'f00000000003'")
    d.sql("update caracal_migrations set down_revision = 'e00000000000'")
    err = raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS })
    assert.equal("schema_unknown", err.kind)
    assert.matches("^Database schema is at an unknown revision! Current revision: f00000000003", err.message)
    d.drop()
  end)
end)

describe("adoption of a database made by the original Python tool", function()
  it("recognises alembic h7i8j9k0l1m2 as revision 1 and upgrades it with no data loss", function()
    local d = fresh("adopt")
    -- The original's shape: revision 1's tables, alembic_version, some rows.
    migrate.upgrade(d.manager, REV1, { dir = MIGRATIONS })
    d.sql("drop table caracal_migrations")
    local file = tmpdir() .. "/original.sql"
    write(file, [[
create table alembic_version (version_num varchar(32) not null, constraint alembic_version_pkc primary key (version_num));
insert into alembic_version values ('h7i8j9k0l1m2');
insert into principals values ('6f1c5a3e-0d2b-4c1e-9a7f-2b3c4d5e6f70', 'agent-1', 'agent', 'me@example.com',
  null, null, null, '2024-03-01 12:00:00', '{"k": "v"}');
insert into ledger_events (agent_id, "timestamp", resource_type, quantity, cost, currency)
  values ('6f1c5a3e-0d2b-4c1e-9a7f-2b3c4d5e6f70', '2024-03-01 12:30:00.123456', 'api.openai.gpt4', 1000, 0.03, 'USD');
]])
    local out, rc = sh(string.format("psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U caracal -d %s -f %s",
      testdb.port, d.name, q(file)))
    assert.equal(0, rc, out)

    local info = migrate.current(d.manager, { dir = MIGRATIONS })
    assert.equal(REV1, info.revision)
    assert.equal("h7i8j9k0l1m2", info.adoptable)
    assert.equal(2, info.pending)
    assert.is_nil(d.scalar("select to_regclass('caracal_migrations')::text")) -- reading wrote nothing
    assert.equal("Database schema is outdated! Current revision: " .. REV1 .. ", Head revision: " .. REV3 ..
      ", Pending migrations: 2, run 'caracal db upgrade head'",
      raises(migrate.check_schema_version_on_startup, d.manager, { dir = MIGRATIONS }).message)

    local events = {}
    local res = migrate.upgrade(d.manager, "head", { dir = MIGRATIONS,
      progress = function(ev) events[#events + 1] = ev.event end })
    assert.equal(REV1, res.adopted)
    assert.equal(2, #res.applied)
    assert.same({ "adopt", "start", "done", "start", "done" }, events)
    local rows = d.sql("select revision::text as revision, applied_by, checksum from caracal_migrations order by applied_at, revision")
    assert.equal(REV1, rows[1].revision)
    assert.matches("^caracal %(adopted from alembic h7i8j9k0l1m2 by ", rows[1].applied_by)
    assert.equal(migrate.load({ dir = MIGRATIONS }):at(1).checksum, rows[1].checksum)
    assert.equal(REV2, rows[2].revision)
    -- Rows kept, naive UTC read as UTC; alembic_version left as it was.
    local p = d.sql("select name, created_at, metadata from principals")[1]
    assert.equal("agent-1", p.name)
    assert.equal("2024-03-01T12:00:00Z", tostring(p.created_at))
    assert.equal("v", p.metadata.k)
    local e = d.sql("select \"timestamp\", quantity, cost, currency from ledger_events")[1]
    assert.equal("2024-03-01T12:30:00.123456Z", tostring(e.timestamp))
    assert.equal("1000.000000", tostring(e.quantity))
    assert.equal("0.030000", tostring(e.cost))
    assert.equal("h7i8j9k0l1m2", d.scalar("select version_num from alembic_version"))
    assert.is_true(migrate.check_schema_version_on_startup(d.manager, { dir = MIGRATIONS }))
    d.drop()
  end)

  it("refuses an alembic revision it cannot adopt", function()
    local d = fresh("adopt_other")
    d.sql("create table alembic_version (version_num varchar(32) primary key)")
    d.sql("insert into alembic_version values ('0123456789ab')")
    local err = raises(migrate.upgrade, d.manager, "head", { dir = MIGRATIONS })
    assert.equal("schema_unknown", err.kind)
    assert.matches("alembic revision 0123456789ab; only a database at h7i8j9k0l1m2 can be adopted", err.message, 1, true)
    d.sql("update alembic_version set version_num = 'h7i8j9k0l1m2'")
    err = raises(migrate.upgrade, d.manager, "head", { dir = MIGRATIONS })
    assert.matches("alembic_version says h7i8j9k0l1m2 but tables principals, execution_mandates", err.message, 1, true)
    d.drop()
  end)
end)

describe("migrate options and the command line in process", function()
  -- Run main() with stdout and stderr captured.
  local function main(args, ctx)
    local out, err = {}, {}
    local function sink(buf)
      return { write = function(self, ...) for _, v in ipairs({ ... }) do buf[#buf + 1] = v end return self end,
               flush = function() end }
    end
    local real_out, real_err = io.stdout, io.stderr
    io.stdout, io.stderr = sink(out), sink(err)
    local ok, rc = pcall(migrate.main, args, ctx)
    io.stdout, io.stderr = real_out, real_err
    assert(ok, rc)
    return rc, table.concat(out), table.concat(err)
  end

  it("shows progress on a terminal and asks before a downgrade", function()
    local d = fresh("tty")
    local answers = {}
    local ctx = { manager = function() return d.manager end, isatty = function() return true end,
                  read_line = function() return table.remove(answers, 1) end }
    local rc, out = main({ "upgrade", REV2, "--dir", MIGRATIONS }, ctx)
    assert.equal(0, rc)
    assert.matches("^%[1/2%] Applying 0001 v0%.5 baseline %.%.%. done %(%d+ ms%)\n" ..
                   "%[2/2%] Applying 0002 hardening %.%.%. done %(%d+ ms%)\n" ..
                   "upgraded from base to " .. REV2 .. ": 2 revisions in %d+ ms\n$", out)
    answers = { "n" }
    local err
    rc, out, err = main({ "downgrade", "-1", "--dir", MIGRATIONS }, ctx)
    assert.equal(1, rc)
    assert.equal("Downgrade from 0002 " .. REV2 .. " (hardening) to 0001 " .. REV1 .. " (v0.5 baseline)? [y/N] ", err)
    assert.equal("cancelled: nothing was changed\n", out)
    answers = { "y" }
    rc, out = main({ "downgrade", "-1", "--dir", MIGRATIONS }, ctx)
    assert.equal(0, rc)
    assert.matches("%[1/1%] Reverting 0002 hardening %.%.%. done", out)
    assert.equal(REV1, migrate.current(d.manager, { dir = MIGRATIONS }).revision)
    d.drop()
  end)

  it("applies lock_timeout and statement_timeout to each revision", function()
    local d = fresh("timeouts")
    d.sql("create table busy (x int)")
    local dir = make_dir({ { rev = "aa01", up = '    op.add_column("busy", { "y", "INTEGER", nullable = true })' } })
    local blocker = db.create_connection_manager({ url = d.url, pool_size = 1 })
    local s = blocker:session()
    s:execute("lock table busy in access exclusive mode")
    local t0 = core.utcnow():micros()
    local err = raises(migrate.upgrade, d.manager, "head", { dir = dir, ddl_lock_timeout = "200ms" })
    assert.equal("55P03", err.sqlstate)
    assert.is_true((core.utcnow():micros() - t0) < 3e6)
    s:close()
    blocker:close()
    dir = make_dir({ { rev = "aa01", extra = '  statement_timeout = "100ms",\n', up = '    op.execute("select pg_sleep(2)")' } })
    err = raises(migrate.upgrade, d.manager, "head", { dir = dir })
    assert.equal("57014", err.sqlstate)
    assert.equal(0, d.scalar("select count(*) from caracal_migrations"))
    d.drop()
  end)

  it("stops between revisions when should_stop says so, releasing the lock", function()
    local d = fresh("stop")
    local n = 0
    local err = raises(migrate.upgrade, d.manager, "head", { dir = make_dir(five()),
      should_stop = function() n = n + 1 return n > 2 end })
    assert.equal("interrupted", err.kind)
    assert.matches("stopped before applying 0003 c00000000003 (step 3) as asked", err.message, 1, true)
    assert.same({ "c00000000001", "c00000000002" }, revs(history_rows(d)))
    assert.equal(0, d.scalar("select count(*) from pg_locks where locktype = 'advisory'"))
    d.drop()
  end)

  it("stops when the lock's connection is lost rather than go on unprotected", function()
    local d = fresh("lostlock")
    local n = 0
    local err = raises(migrate.upgrade, d.manager, "head", { dir = make_dir(five()),
      should_stop = function()
        n = n + 1
        if n == 3 then
          d.sql("select pg_terminate_backend(pid) from pg_stat_activity " ..
                "where application_name like 'caracal migrate: applying%'")
        end
        return false
      end })
    assert.equal("lock_lost", err.kind)
    assert.matches("so the lock is gone: stopping before applying 0003 c00000000003", err.message, 1, true)
    assert.same({ "c00000000001", "c00000000002" }, revs(history_rows(d)))
    d.drop()
  end)

  it("ends a statement closing with a -- comment on a line of its own in --sql output", function()
    local dir = make_dir({ { rev = "aa01", up = '    op.execute("select 1 -- a trailing comment")\n' ..
                                                 '    op.execute("select \'--\'")' } })
    local sql = migrate.upgrade(nil, "head", { dir = dir, sql = true })
    assert.matches("\nselect 1 %-%- a trailing comment\n;\nselect '%-%-';\n", sql)
  end)

  it("lists the folder without lfs too, whatever its name", function()
    local dir = tmpdir() .. "/odd 'name' dir"
    make_dir(five(), dir)
    local saved = package.loaded.lfs
    package.loaded.lfs = "unavailable"
    local ok, s = pcall(migrate.load, { dir = dir })
    package.loaded.lfs = saved
    assert(ok, s)
    assert.equal(5, s:count())
    assert.equal("odd 'name' dir/0001_c00000000001_step1.lua", s:at(1).display)
  end)
end)
