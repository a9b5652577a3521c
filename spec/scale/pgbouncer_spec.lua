-- Caracal behind PgBouncer in transaction mode (Debian's pgbouncer, started
-- here on a free loopback port in front of the test cluster, with fewer
-- server connections than clients so they are shared). With pooler =
-- "transaction" the model API, nested scopes, the bulk path and a full
-- `caracal db upgrade head` work through it; without, PgBouncer refuses
-- the connection options and Caracal says what to set.
package.path = "spec/scale/?.lua;" .. package.path
local core = require "caracal.core"
local db = require "caracal.db"
local models = require "caracal.models"
local testdb = require "testdb"
local H = require "scale_helpers"

local REV3 = "c3b8f1d27a94"

local function find_pgbouncer()
  for _, c in ipairs({ "command -v pgbouncer", "ls /usr/sbin/pgbouncer" }) do
    local out, rc = H.sh(c)
    if rc == 0 and out:find("%S") then return (out:gsub("%s+$", "")) end
  end
end

-- Start a PgBouncer (transaction mode, trust) in front of the test
-- cluster; extra lines go to its [pgbouncer] section. Returns
-- `{port, dir, stop()}`.
local function start_pgbouncer(bin, extra)
  local dir = H.tmpdir("caracal-pgbouncer")
  local port = H.free_port(55800)
  local user = H.is_root() and "postgres" or nil -- PgBouncer refuses to run as root
  local ini = table.concat({
    "[databases]",
    "* = host=127.0.0.1 port=" .. testdb.port,
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    "listen_port = " .. port,
    "unix_socket_dir =",
    "auth_type = trust",
    "auth_file = " .. dir .. "/userlist.txt",
    "pool_mode = transaction",
    "default_pool_size = 3",
    "max_client_conn = 200",
    "logfile = " .. dir .. "/pgbouncer.log",
    "pidfile = " .. dir .. "/pgbouncer.pid",
    extra or "",
  }, "\n") .. "\n"
  local f = assert(io.open(dir .. "/pgbouncer.ini", "w"))
  f:write(ini)
  f:close()
  f = assert(io.open(dir .. "/userlist.txt", "w"))
  f:write('"caracal" ""\n')
  f:close()
  if user then H.must("chown -R " .. user .. " " .. H.q(dir)) end
  H.must(H.as(user, H.q(bin) .. " -d " .. H.q(dir .. "/pgbouncer.ini")))
  H.wait("pgbouncer to listen on " .. port, 10, function()
    return H.sh("ss -ltnH 'sport = :" .. port .. "'"):find("%S")
  end)
  local pb = { port = port, dir = dir }
  function pb.stop()
    local pid = (H.lines(dir .. "/pgbouncer.pid")[1] or ""):match("^(%d+)")
    if pid then
      H.sh("kill " .. pid)
      pcall(H.wait, "pgbouncer to stop", 10, function() return select(2, H.sh("kill -0 " .. pid)) ~= 0 end)
    end
    H.sh("rm -rf " .. H.q(dir))
  end
  return pb
end

describe("behind PgBouncer in transaction mode", function()
  local bin = find_pgbouncer()
  local pb, d, url, m

  setup(function()
    if not bin then return end
    pb = start_pgbouncer(bin)
    d = testdb.fresh_database("pgb")
    url = "postgresql://caracal@127.0.0.1:" .. pb.port .. "/" .. d.name .. "?pooler=transaction"
    m = db.create_connection_manager({ url = url, pool_size = 4, max_overflow = 4 })
  end)

  teardown(function()
    if m then m:close() end
    if pb then pb.stop() end
    if d then d.drop() end
  end)

  -- Skip (with the reason) when there is no pgbouncer.
  local function need()
    if not bin then pending("pgbouncer is not installed (make scale installs it)") end
  end

  local function caracal(args)
    return H.sh(H.q(H.bin) .. " " .. args .. " </dev/null")
  end

  it("runs a full `caracal db upgrade head` through it, the migration lock taken as a lease row", function()
    need()
    local out, rc = caracal("--url " .. H.q(url) .. " db upgrade head")
    assert.equal(0, rc, out)
    assert.matches("applied 0003 " .. REV3 .. " partitioned ledgers", out, 1, true)
    out, rc = caracal("--url " .. H.q(url) .. " db current")
    assert.equal(0, rc, out)
    assert.equal(REV3 .. " (0003 partitioned ledgers) (head)\n", out)
    assert.equal(3, d.manager:execute("select count(*) as n from caracal_migrations")[1].n)
    assert.equal(0, d.manager:execute("select count(*) as n from caracal_migration_lock")[1].n)
    assert.equal("p", d.manager:execute("select relkind::text as k from pg_class where relname = 'ledger_events'")[1].k)
    assert.is_true(require("caracal.migrate").check_schema_version_on_startup(m,
      { dir = (os.getenv("CARACAL_ROOT") or ".") .. "/migrations" }))
  end)

  it("serialises two concurrent upgrades through it", function()
    need()
    local e = testdb.fresh_database("pgb_two")
    local eurl = "postgresql://caracal@127.0.0.1:" .. pb.port .. "/" .. e.name .. "?pooler=transaction"
    local dir = H.tmpdir("caracal-pgb-migrations")
    for i = 1, 3 do
      local f = assert(io.open(string.format("%s/%04d_cc0%d_step.lua", dir, i, i), "w"))
      f:write(string.format('return { revision = "cc0%d", down_revision = %s, message = "step %d",\n' ..
        '  up = function(op) op.execute("select pg_sleep(0.3)") op.create_table("t%d", { { "id", "INTEGER" } }) end,\n' ..
        '  down = function(op) op.drop_table("t%d") end }\n', i, i > 1 and ('"cc0' .. (i - 1) .. '"') or "nil", i, i, i))
      f:close()
    end
    local function cmd(n)
      return H.q(H.bin) .. " --url " .. H.q(eurl) .. " db upgrade head --dir " .. H.q(dir) ..
        " --lock-timeout 30 >" .. H.q(dir .. "/o" .. n) .. " 2>&1"
    end
    local _, rc = H.sh(cmd(1) .. " & " .. cmd(2) .. " & wait")
    assert.equal(0, rc)
    local applied, waited = 0, 0
    for n = 1, 2 do
      for _, l in ipairs(H.lines(dir .. "/o" .. n)) do
        if l:match("^applied ") then applied = applied + 1 end
        if l:match("^waiting for the migration lock, held by caracal db upgrade") then waited = waited + 1 end
      end
    end
    assert.equal(3, applied)
    assert.equal(1, waited)
    assert.equal(3, e.manager:execute("select count(*) as n from caracal_migrations")[1].n)
    H.sh("rm -rf " .. H.q(dir))
    e.drop()
  end)

  it("works with the model API and nested scopes", function()
    need()
    local agent = m:session_scope(function(s)
      local a = models.Principal { name = "pgb-agent", principal_type = "agent", owner = "ops@example.com" }
      s:add(a)
      for i = 1, 40 do
        s:add(models.LedgerEvent { agent_id = a.principal_id, resource_type = "api.pgb", quantity = core.Decimal(i),
          cost = core.Decimal("0.025"), event_metadata = { i = i } })
      end
      return a
    end)
    m:session_scope(function(s)
      s:add(models.LedgerEvent { agent_id = agent.principal_id, resource_type = "outer", quantity = "1", cost = "1" })
      s:flush()
      local ok = pcall(s.session_scope, s, function(inner)
        inner:add(models.LedgerEvent { agent_id = agent.principal_id, resource_type = "inner", quantity = "1",
          cost = "1" })
        inner:flush()
        error("undo the inner scope only")
      end)
      assert.is_false(ok)
      s:session_scope(function(inner) inner:execute("select 1") end)
    end)
    m:session_scope(function(s)
      local got = s:get("Principal", agent.principal_id)
      assert.equal("pgb-agent", got.name)
      local events = s:query("LedgerEvent", { agent_id = agent.principal_id, resource_type = "api.pgb" },
        { order_by = "event_id desc", limit = 5 })
      assert.equal(5, #events)
      assert.equal(40, events[1].event_metadata.i)
      assert.equal("1.000000", tostring(s:scalar("select sum(cost) from ledger_events where agent_id = $1 " ..
        "and resource_type = 'api.pgb'", agent.principal_id)))
      assert.equal(1, s:scalar("select count(*) from ledger_events where resource_type = 'outer'"))
      assert.equal(0, s:scalar("select count(*) from ledger_events where resource_type = 'inner'"))
    end)
  end)

  it("takes the bulk path (COPY, and the pipeline for returning rows)", function()
    need()
    if not db.Session.bulk_insert then pending("session:bulk_insert is not in this tree yet") return end
    local agent = m:session_scope(function(s)
      return s:first("select principal_id from principals where name = 'pgb-agent'").principal_id
    end)
    local rows = {}
    for i = 1, 5000 do
      rows[i] = { agent_id = agent, resource_type = "bulk.pgb", quantity = core.Decimal(i), cost = core.Decimal("0.5") }
    end
    local n = m:session_scope(function(s) return s:bulk_insert(models.LedgerEvent, rows) end)
    assert.equal(5000, n)
    local objs = m:session_scope(function(s)
      return s:bulk_insert(models.LedgerEvent, { rows[1], rows[2], rows[3] }, { returning = true })
    end)
    assert.equal(3, #objs)
    assert.is_true(math.type(objs[3].event_id) == "integer")
    local r = m:execute("select count(*) as n, sum(quantity) as q from ledger_events where resource_type = 'bulk.pgb'")[1]
    assert.equal(5003, r.n)
    assert.equal(core.Decimal("12502506"), r.q) -- 1 + ... + 5000, then 1 + 2 + 3
  end)

  it("keeps statements unnamed when many clients share three server connections", function()
    need()
    local dir = H.tmpdir("caracal-pgb-clients")
    local script = dir .. "/client.lua"
    local f = assert(io.open(script, "w"))
    f:write([[
for i = 1, 150 do
  db:session_scope(function(s)
    assert(s:scalar("select $1::int8 + 1", i) == i + 1)
    assert(s:scalar("select count(*) from principals where name = $1", "pgb-agent") == 1)
  end)
  assert(db:execute("select $1::text || 'x' as v", tostring(i))[1].v == i .. "x")
end
print("client done")
]])
    f:close()
    local cmds = {}
    for k = 1, 5 do
      cmds[k] = H.q(H.bin) .. " --url " .. H.q(url) .. " " .. H.q(script) .. " >" .. H.q(dir .. "/c" .. k) .. " 2>&1"
    end
    local _, rc = H.sh(table.concat(cmds, " & ") .. " & wait")
    assert.equal(0, rc)
    for k = 1, 5 do
      assert.same({ "client done" }, H.lines(dir .. "/c" .. k), "client " .. k)
    end
    H.sh("rm -rf " .. H.q(dir))
  end)

  it("refuses session state with 0A000, and without pooler mode says to set it", function()
    need()
    local ok, err = pcall(m.execute, m, "set statement_timeout = 1000")
    assert.is_false(ok)
    assert.same({ "pooler", "0A000" }, { err.kind, err.sqlstate })
    -- Without pooler = "transaction", PgBouncer refuses the connection options.
    local plain = url:gsub("%?pooler=transaction$", "")
    local out, rc = caracal("--url " .. H.q(plain) .. " -e " .. H.q("db:execute('select 1')"))
    assert.equal(1, rc)
    assert.matches("unsupported startup parameter: options", out, 1, true)
    assert.matches("set pooler = 'transaction' (or add ?pooler=transaction to the URL)", out, 1, true)
  end)

  it("has the migration lock refuse a pooler the configuration does not name", function()
    need()
    -- A PgBouncer that lets the options through (ignoring them): Caracal
    -- connects, and the lock notices the pooler by its backend key.
    local lax = start_pgbouncer(bin, "ignore_startup_parameters = options")
    local out, rc = caracal("--url " .. H.q("postgresql://caracal@127.0.0.1:" .. lax.port .. "/" .. d.name) ..
      " db upgrade head")
    lax.stop()
    assert.equal(1, rc)
    assert.matches("this connection goes through a connection pooler", out, 1, true)
    assert.matches("set pooler = 'transaction'", out, 1, true)
  end)
end)
