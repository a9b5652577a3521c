-- `caracal db ...`: the migration command line, run as a subprocess of
-- the host binary against the throwaway cluster. Until the host wires the
-- `db` command, the same entry point (caracal.migrate.main) runs through
-- `caracal -e`, so these specs pass before and after the wiring.
local core = require "caracal.core"
local testdb = require "testdb"

local BIN = testdb.bin
local ROOT = os.getenv("CARACAL_ROOT") or "."
local MIGRATIONS = ROOT .. "/migrations"
local REV1, REV2, REV3 = "5f3c8a1e9b20", "a7d4e2c91f06", "c3b8f1d27a94"
local q = testdb.shell_quote

-- Output (stdout and stderr apart) and exit code of a shell command.
local function run(cmd)
  local tmp = os.tmpname()
  local p = io.popen("( " .. cmd .. " ) 2>" .. q(tmp) .. "; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local f = io.open(tmp, "rb")
  local err = f:read("a")
  f:close()
  os.remove(tmp)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), err, rc
end

local WIRED = (function()
  local out, _, rc = run(q(BIN) .. " db --help </dev/null")
  return rc == 0 and out:find("caracal db COMMAND", 1, true) ~= nil
end)()

-- `caracal db ARGS` (ARGS already shell-quoted, the command word first).
local function caracal_db(args, env)
  local prefix = env and (env .. " ") or ""
  if WIRED then return run(prefix .. q(BIN) .. " db " .. args .. " </dev/null") end
  return run(prefix .. q(BIN) .. " -e " .. q('os.exit(require("caracal.migrate").main({...}))') .. " " ..
    args .. " </dev/null")
end

local dbs, temps = {}, {}
local function fresh()
  local d = testdb.fresh_database("cli", { pool_size = 1, max_overflow = 0 })
  dbs[#dbs + 1] = d
  return d.name, d.url
end

local function scalar(url, sql)
  local m = require("caracal.db").create_connection_manager({ url = url, pool_size = 1 })
  local rows = m:execute(sql)
  m:close()
  return rows[1] and rows[1][rows.columns[1]]
end

local function tmpdir()
  local out = run("mktemp -d /tmp/caracal-cli.XXXXXX")
  local d = out:match("%S+")
  temps[#temps + 1] = d
  return d
end

teardown(function()
  for _, d in ipairs(dbs) do pcall(d.drop) end
  for _, d in ipairs(temps) do run("rm -rf " .. q(d)) end
end)

describe("caracal db", function()
  it("prints help for db and each command, and exits 2 on usage errors", function()
    local out, _, rc = caracal_db(WIRED and "--help" or "help")
    assert.equal(0, rc)
    assert.matches("Usage: caracal db COMMAND", out, 1, true)
    for _, cmd in ipairs({ "current", "history", "heads", "check", "upgrade", "downgrade", "stamp", "force",
                           "accept", "revision" }) do
      out, _, rc = caracal_db(cmd .. " --help")
      assert.equal(0, rc, cmd)
      assert.matches("Usage: caracal db " .. cmd, out, 1, true)
    end
    local err
    _, err, rc = caracal_db("frobnicate")
    assert.equal(2, rc)
    assert.matches("unknown command 'frobnicate'", err, 1, true)
    _, err, rc = caracal_db("upgrade --dir " .. q(MIGRATIONS))
    assert.equal(2, rc)
    assert.matches("upgrade needs a TARGET", err, 1, true)
    _, err, rc = caracal_db("upgrade head --frob")
    assert.equal(2, rc)
    assert.matches("unknown option --frob", err, 1, true)
  end)

  it("prints the SQL with --sql and contacts no database", function()
    -- Port 1 on loopback refuses at once: any attempt to connect would fail.
    local _
    local out, err, rc = caracal_db("upgrade head --sql --dir " .. q(MIGRATIONS) ..
      " --url postgresql://nobody@127.0.0.1:1/nowhere")
    assert.equal(0, rc, err)
    assert.equal("", err)
    assert.matches("^%-%- caracal db upgrade head %-%-sql", out)
    local _, begins = out:gsub("\nBEGIN;\n", "")
    local _, commits = out:gsub("\nCOMMIT;\n", "")
    assert.equal(4, begins) -- the history table, then one per revision
    assert.equal(4, commits)
    assert.matches("INSERT INTO caracal_migrations", out, 1, true)
    _, err, rc = caracal_db("downgrade base --sql --dir " .. q(MIGRATIONS))
    assert.equal(2, rc)
    assert.matches("needs a range FROM:TO", err, 1, true)
    out, err, rc = caracal_db("downgrade " .. REV2 .. ":" .. REV1 .. " --sql --dir " .. q(MIGRATIONS))
    assert.equal(0, rc, err)
    assert.matches("DELETE FROM caracal_migrations WHERE revision = '" .. REV2 .. "';", out, 1, true)
  end)

  it("upgrades, reports and checks a database", function()
    local _, url = fresh()
    local dir = " --dir " .. q(MIGRATIONS) .. " --url " .. q(url)
    local out, err, rc = caracal_db("current --json" .. dir)
    assert.equal(0, rc, err)
    local info = core.json_decode(out)
    assert.equal(3, info.pending)
    assert.equal(REV3, info.head)
    assert.is_nil(info.revision)

    out, err, rc = caracal_db("check" .. dir)
    assert.equal(1, rc)
    assert.matches("3 pending migrations: 0001 " .. REV1 .. " (v0.5 baseline), 0002 " .. REV2 ..
      " (hardening), 0003 " .. REV3 .. " (partitioned ledgers); run 'caracal db upgrade head'", out, 1, true)

    out, err, rc = caracal_db("upgrade +1" .. dir)
    assert.equal(0, rc, err)
    assert.matches("^applied 0001 " .. REV1 .. " v0%.5 baseline %(%d+ ms%)\nupgraded from base to " .. REV1, out)
    out, err, rc = caracal_db("upgrade head" .. dir)
    assert.equal(0, rc, err)
    assert.matches("applied 0002 " .. REV2 .. " hardening", out, 1, true)
    out, _, rc = caracal_db("upgrade head" .. dir)
    assert.equal(0, rc)
    assert.equal("nothing to do: the database is at " .. REV3 .. "\n", out)

    out, err, rc = caracal_db("check --json" .. dir)
    assert.equal(0, rc, err)
    assert.is_true(core.json_decode(out).ok)
    out, _, rc = caracal_db("current" .. dir)
    assert.equal(0, rc)
    assert.equal(REV3 .. " (0003 partitioned ledgers) (head)\n", out)
    out, _, rc = caracal_db("history -v" .. dir)
    assert.equal(0, rc)
    assert.matches("0003 " .. REV3 .. " partitioned ledgers (current) (head)  [applied]", out, 1, true)
    assert.matches("checksum %x+", out)
    out, _, rc = caracal_db("heads --dir " .. q(MIGRATIONS))
    assert.equal(0, rc)
    assert.equal(REV3 .. " (0003 partitioned ledgers) 0003_c3b8f1d27a94_partitioned_ledgers.lua\n", out)
    -- The default folder comes from CARACAL_MIGRATIONS_DIR.
    out, err, rc = caracal_db("current --url " .. q(url), "CARACAL_MIGRATIONS_DIR=" .. q(MIGRATIONS))
    assert.equal(0, rc, err)
    assert.matches("(head)", out, 1, true)
  end)

  it("asks before a downgrade and refuses without --yes when stdin is not a terminal", function()
    local _, url = fresh()
    local dir = " --dir " .. q(MIGRATIONS) .. " --url " .. q(url)
    assert.equal(0, select(3, caracal_db("upgrade " .. REV2 .. dir)))
    local _, err, rc = caracal_db("downgrade -1" .. dir)
    assert.equal(2, rc)
    assert.matches("refusing to downgrade from 0002 " .. REV2 .. " (hardening) to 0001 " .. REV1 ..
      " (v0.5 baseline) without confirmation: stdin is not a terminal; pass --yes", err, 1, true)
    assert.equal(REV2, scalar(url, "select revision from caracal_migrations order by applied_at desc limit 1"))
    local out
    out, err, rc = caracal_db("downgrade base --yes" .. dir)
    assert.equal(0, rc, err)
    assert.matches("reverted 0002", out, 1, true)
    assert.matches("downgraded from " .. REV2 .. " to base: 2 revisions", out, 1, true)
  end)

  it("reports a failing revision as one block: file:line, SQLSTATE, SQL, outcome", function()
    local _, url = fresh()
    local dir = tmpdir() .. "/migrations"
    run("mkdir -p " .. q(dir))
    local f = io.open(dir .. "/0001_aa01_bad.lua", "wb")
    f:write('return {\n  revision = "aa01",\n  message = "bad",\n  up = function(op)\n' ..
            '    op.execute("create table ok_t (x int)")\n    op.execute("alter table nope add column y int")\n' ..
            '  end,\n  down = function(op) end,\n}\n')
    f:close()
    local out, err, rc = caracal_db("upgrade head --dir " .. q(dir) .. " --url " .. q(url))
    assert.equal(1, rc)
    assert.equal("", out)
    assert.equal('caracal db upgrade: migrations/0001_aa01_bad.lua:6: ERROR 42P01: relation "nope" does not exist\n' ..
      "SQL: alter table nope add column y int\n" ..
      "revision 0001 aa01 (bad) was rolled back completely; the database stays at base (empty)\n", err)
    assert.is_nil(scalar(url, "select to_regclass('ok_t')::text"))
  end)

  it("serialises two concurrent upgrades", function()
    local _, url = fresh()
    local dir = tmpdir() .. "/migrations"
    run("mkdir -p " .. q(dir))
    for i = 1, 3 do
      local f = io.open(string.format("%s/%04d_bb0%d_step.lua", dir, i, i), "wb")
      f:write(string.format('return { revision = "bb0%d", down_revision = %s, message = "step %d",\n' ..
        '  up = function(op) op.execute("select pg_sleep(0.3)") op.create_table("t%d", { { "id", "INTEGER" } }) end,\n' ..
        '  down = function(op) op.drop_table("t%d") end }\n', i, i > 1 and ('"bb0' .. (i - 1) .. '"') or "nil", i, i, i))
      f:close()
    end
    local tmp = tmpdir()
    local function cmd(n)
      local args = "upgrade head --dir " .. q(dir) .. " --url " .. q(url) .. " --lock-timeout 20"
      if WIRED then return q(BIN) .. " db " .. args .. " >" .. q(tmp .. "/o" .. n) .. " 2>&1" end
      return q(BIN) .. " -e " .. q('os.exit(require("caracal.migrate").main({...}))') .. " " .. args ..
        " >" .. q(tmp .. "/o" .. n) .. " 2>&1"
    end
    local _, _, rc = run(cmd(1) .. " & " .. cmd(2) .. " & wait")
    assert.equal(0, rc)
    local applied = 0
    for n = 1, 2 do
      local f = io.open(tmp .. "/o" .. n)
      local text = f:read("a")
      f:close()
      for _ in text:gmatch("\napplied ") do applied = applied + 1 end
      if text:match("^applied ") then applied = applied + 1 end
    end
    assert.equal(3, applied)
    assert.equal(3, scalar(url, "select count(*) from caracal_migrations"))
  end)

  it("writes a new revision file with `revision -m`", function()
    local dir = tmpdir() .. "/migrations"
    run("mkdir -p " .. q(dir) .. " && cp " .. q(MIGRATIONS) .. "/*.lua " .. q(dir))
    local out, err, rc = caracal_db("revision -m " .. q("add widgets") .. " --dir " .. q(dir))
    assert.equal(0, rc, err)
    local path, rev = out:match("^created (%S+) %(revision (%x+)%)\n$")
    assert.equal(dir .. "/0004_" .. rev .. "_add_widgets.lua", path)
    out, err, rc = caracal_db("heads --dir " .. q(dir))
    assert.equal(0, rc, err)
    assert.equal(rev .. " (0004 add widgets) 0004_" .. rev .. "_add_widgets.lua\n", out)
  end)
end)
