-- Passwords with any characters reach the server intact (SCRAM over TCP)
-- and never appear in an error, a log line or a tostring.
local core = require "caracal.core"
local db = require "caracal.db"
local testdb = require "testdb"
local localdb = require "caracal.localdb"

local AWKWARD = "p@ss:w/rd%+ 'q\"x"

local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

describe("passwords", function()
  local hba, saved

  setup(function()
    -- Require SCRAM for one role over TCP, ahead of the cluster's trust rule.
    local info = localdb.status({ home = testdb.home })
    hba = info.data .. "/pg_hba.conf"
    local f = assert(io.open(hba, "r"))
    saved = f:read("a")
    f:close()
    f = assert(io.open(hba, "w"))
    f:write("host all pwuser 127.0.0.1/32 scram-sha-256\n", saved)
    f:close()
    testdb.sql("drop role if exists pwuser")
    -- The password is a literal in DDL, so quote it as one.
    testdb.sql("create role pwuser login password '" .. AWKWARD:gsub("'", "''") .. "'")
    testdb.sql("select pg_reload_conf()")
  end)

  teardown(function()
    local f = io.open(hba, "w")
    f:write(saved)
    f:close()
    testdb.sql("select pg_reload_conf()")
    testdb.sql("drop role if exists pwuser")
  end)

  it("reach the server intact as a field and in a URL", function()
    local m = db.create_connection_manager({ host = "127.0.0.1", port = testdb.port, user = "pwuser",
                                             password = AWKWARD, pool_size = 1 })
    assert.equal("pwuser", m:execute("select current_user as u")[1].u)
    m:close()
    local url = "postgresql://pwuser:" .. encode(AWKWARD) .. "@127.0.0.1:" .. testdb.port .. "/caracal"
    m = db.create_connection_manager({ url = url, pool_size = 1 })
    assert.equal("pwuser", m:execute("select current_user as u")[1].u)
    assert.is_nil(tostring(m):find("w/rd", 1, true))
    assert.matches(":%*%*%*@", tostring(m))
    m:close()
  end)

  it("never appear in a failed connection's error", function()
    local wrong = "Wr0ng-" .. AWKWARD
    local m = db.create_connection_manager({ host = "127.0.0.1", port = testdb.port, user = "pwuser",
                                             password = wrong, pool_size = 1 })
    local ok, err = pcall(m.execute, m, "select 1")
    assert.is_false(ok)
    local text = tostring(err)
    assert.matches("password authentication failed", text, 1, true)
    assert.is_nil(text:find("Wr0ng", 1, true))
    assert.is_nil(text:find(encode(wrong), 1, true))
    m:close()
  end)

  it("are redacted from libpq's own messages", function()
    local msg = "invalid URI query parameter: \"postgresql://u:" .. encode(AWKWARD) .. "@h/db?x\""
    local red = core.redact(msg, AWKWARD)
    assert.is_nil(red:find(encode(AWKWARD), 1, true))
    assert.matches("***", red, 1, true)
    assert.equal("host=h password=*** dbname=x", core.redact("host=h password=abc dbname=x"))
  end)
end)
