-- Admin tasks end to end through the host binary, on a fresh migrated
-- database: results, error paths and exit codes.
local core = require "caracal.core"
local testdb = require "testdb"

local fresh = testdb.fresh_database("tasks")
local url = fresh.url

local function caracal(cmd, stdin)
  local line = "CARACAL_DATABASE_URL=" .. testdb.shell_quote(url) .. " " .. testdb.bin .. " " .. cmd
  if stdin then line = "printf %s " .. testdb.shell_quote(stdin) .. " | " .. line end
  local p = io.popen("(" .. line .. ") 2>/tmp/caracal-tasks-stderr; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local f = io.open("/tmp/caracal-tasks-stderr")
  local err = f:read("a")
  f:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return out:gsub("__rc=%d+%s*$", ""), rc, err
end

local function count(sql, ...)
  local m = testdb.manager({ url = url, pool_size = 1 })
  local n = m:execute(sql, ...)[1].n
  m:close()
  return n
end

describe("admin tasks", function()
  setup(function()
    local out, rc, err = caracal("db upgrade head")
    assert(rc == 0, out .. err)
  end)

  teardown(function()
    fresh.drop()
  end)

  it("principal add, list and show, with keys; errors exit 1, usage errors 2", function()
    local out, rc = caracal("principal add alice --type agent --owner a@example.com --generate-keys")
    assert.equal(0, rc)
    assert.matches("^added Principal<", out)
    out, rc = caracal("principal show alice --json")
    assert.equal(0, rc)
    local p = core.json_decode(out)
    assert.equal("alice", p.name)
    assert.matches("BEGIN PUBLIC KEY", p.public_key_pem)
    assert.is_nil(p.private_key_pem)
    assert.equal(1, count("select count(*) as n from principals where private_key_pem like '%PRIVATE KEY%'"))
    local err
    out, rc, err = caracal("principal show nobody")
    assert.equal(1, rc)
    assert.equal("ERROR: unknown principal 'nobody'\n", err)
    out, rc, err = caracal("principal add bob --type robot --owner x")
    assert.equal(1, rc)
    assert.matches('Principal.principal_type: expected one of agent, user, service, got "robot"', err, 1, true)
    out, rc, err = caracal("principal add carol --owner x")
    assert.equal(2, rc)
    assert.matches("principal add needs --type", err, 1, true)
    out, rc = caracal("principal --help")
    assert.equal(0, rc)
    assert.matches("Usage: caracal principal add", out, 1, true)
    out, rc = caracal("principal list")
    assert.equal(0, rc)
    assert.matches("alice", out)
    assert.matches("(1 row)", out, 1, true)
  end)

  it("policy set replaces the active policy in one transaction", function()
    caracal("principal add pol --type service --owner ops")
    local _, rc = caracal("policy set pol --max-validity 3600 --resources 'api.*,db.read' --actions read")
    assert.equal(0, rc)
    _, rc = caracal("policy set pol --max-validity 60 --resources '*' --actions '*' --allow-delegation --max-depth 2")
    assert.equal(0, rc)
    assert.equal(1, count("select count(*) as n from authority_policies p join principals x using (principal_id) " ..
                          "where x.name = 'pol' and active"))
    assert.equal(2, count("select count(*) as n from authority_policies p join principals x using (principal_id) " ..
                          "where x.name = 'pol'"))
    local out = caracal("policy list pol --json")
    local list = core.json_decode(out)
    assert.equal(1, #list)
    assert.equal(60, list[1].max_validity_seconds)
    local _, rc2, err = caracal("policy set pol --max-validity soon --resources x --actions y")
    assert.equal(2, rc2)
    assert.matches("--max-validity must be an integer, got 'soon'", err, 1, true)
  end)

  it("ledger record, list and spending are exact; a bad decimal writes nothing", function()
    caracal("principal add spender --type agent --owner o")
    for _ = 1, 3 do
      local _, rc = caracal("ledger record spender --resource api.x --quantity 10 --cost 0.000001")
      assert.equal(0, rc)
    end
    local out, rc, err = caracal("ledger record spender --resource api.x --quantity 1 --cost 0.0000001")
    assert.equal(1, rc)
    assert.matches("LedgerEvent.cost: 0.0000001 has 7 decimal places, NUMERIC(20,6) allows 6", err, 1, true)
    out, rc, err = caracal("ledger record ghost --resource api.x --quantity 1 --cost 1")
    assert.equal(1, rc)
    assert.equal("ERROR: unknown principal 'ghost'\n", err)
    out = caracal("ledger spending --agent spender --json")
    local totals = core.json_decode(out)
    assert.equal("0.000003", totals[1].total)
    assert.equal(3, totals[1].events)
    out = caracal("ledger list spender --limit 2 --json")
    assert.equal(2, #core.json_decode(out))
  end)

  it("ledger import is all or nothing and reports progress", function()
    caracal("principal add importer --type agent --owner o")
    local agent = core.json_decode((caracal("principal show importer --json"))).principal_id
    local path = os.tmpname() .. ".csv"
    local f = io.open(path, "w")
    f:write("agent_id,resource_type,quantity,cost,currency\n")
    for i = 1, 250 do f:write(string.format("%s,api.import,%d,0.010000,USD\n", agent, i)) end
    f:close()
    local out, rc, err = caracal("ledger import " .. path .. " --batch 100")
    assert.equal(0, rc)
    assert.equal("imported 250 events\n", out)
    assert.matches("importing: 250/250", err, 1, true) -- plain lines when stderr is not a terminal
    assert.equal(250, count("select count(*) as n from ledger_events where agent_id = $1", agent))
    -- a bad line stops the whole import before anything is written
    f = io.open(path, "w")
    f:write("agent_id,resource_type,quantity,cost\n")
    f:write(agent .. ",api.import,1,0.5\n")
    f:write(agent .. ",api.import,1,0.1234567\n")
    f:close()
    out, rc, err = caracal("ledger import " .. path)
    assert.equal(1, rc)
    assert.matches(path .. ":3: LedgerEvent.cost: 0.1234567 has 7 decimal places", err, 1, true)
    assert.equal(250, count("select count(*) as n from ledger_events where agent_id = $1", agent))
    os.remove(path)
  end)

  it("snapshot create, list and show", function()
    local out, rc = caracal("snapshot create --json")
    assert.equal(0, rc)
    local snap = core.json_decode(out)
    assert.is_true(core.is_uuid(snap.snapshot_id))
    out = caracal("snapshot list --json")
    assert.equal(snap.snapshot_id, core.json_decode(out)[1].snapshot_id)
    out, rc = caracal("snapshot show " .. snap.snapshot_id)
    assert.equal(0, rc)
    assert.matches("total_events", out)
    local err
    out, rc, err = caracal("snapshot prune --days 0")
    assert.equal(1, rc) -- stdin is not a terminal: not confirmed
    assert.matches("pass --yes", err, 1, true)
  end)

  it("status shows the masked URL, the pool and the schema revision", function()
    local out, rc = caracal("status --json")
    assert.equal(0, rc)
    local st = core.json_decode(out)
    assert.equal(0, st.schema.pending)
    assert.equal(st.schema.head, st.schema.revision)
    assert.equal(10, st.pool.size)
    local _, hrc = caracal("health")
    assert.equal(0, hrc)
  end)
end)
