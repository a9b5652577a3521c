-- DatabaseConfig: defaults, validation, URLs and masking (no database).
local config = require "caracal.config"
local DatabaseConfig = config.DatabaseConfig

local function err_of(t)
  local ok, err = pcall(DatabaseConfig, t)
  assert.is_false(ok)
  return err
end

describe("DatabaseConfig", function()
  it("has the seed's defaults", function()
    local c = DatabaseConfig {}
    -- PG* variables may be set by a caller; the spec runner clears them.
    assert.same({ "localhost", 5432, "caracal", "caracal", "" },
                { c.host, c.port, c.database, c.user, c.password })
    assert.same({ 10, 5, 30, 3600, false }, { c.pool_size, c.max_overflow, c.pool_timeout, c.pool_recycle, c.echo })
    assert.equal("caracal", c.application_name)
    assert.is_true(c.keepalives)
    local ci = c:conninfo()
    assert.equal("1", ci.keepalives)
    assert.equal("5", ci.keepalives_idle)
    assert.equal("2", ci.keepalives_interval)
    assert.equal("3", ci.keepalives_count)
    assert.matches("-c DateStyle=ISO,YMD", ci.options, 1, true)
  end)

  it("validates every value with a precise message", function()
    assert.equal("DatabaseConfig: pool_size must be an integer >= 1, got -1", err_of { pool_size = -1 })
    assert.equal("DatabaseConfig: pool_size must be an integer >= 1, got 0", err_of { pool_size = 0 })
    assert.equal("DatabaseConfig: pool_size must be an integer >= 1, got 2.5", err_of { pool_size = 2.5 })
    assert.equal("DatabaseConfig: max_overflow must be an integer >= 0 (or -1 for no limit), got -2",
                 err_of { max_overflow = -2 })
    assert.equal("DatabaseConfig: pool_timeout must be a number of seconds >= 0, got -1",
                 err_of { pool_timeout = -1 })
    assert.equal("DatabaseConfig: pool_timeout must be a number of seconds >= 0, got nan",
                 err_of { pool_timeout = 0 / 0 }:gsub("%-nan", "nan"))
    assert.equal('DatabaseConfig: port must be an integer between 1 and 65535, got "abc"', err_of { port = "abc" })
    assert.equal("DatabaseConfig: port must be an integer between 1 and 65535, got 70000", err_of { port = 70000 })
    assert.equal("DatabaseConfig: echo must be true or false, got \"yes\"", err_of { echo = "yes" })
    assert.equal("DatabaseConfig: sslmode must be one of disable, allow, prefer, require, verify-ca, " ..
                 "verify-full, got \"sometimes\"", err_of { sslmode = "sometimes" })
    assert.equal(-1, DatabaseConfig { max_overflow = -1 }.max_overflow)
  end)

  it("rejects unknown keys, with a suggestion", function()
    assert.equal("DatabaseConfig: unknown option 'pool_sise' (did you mean 'pool_size'?)", err_of { pool_sise = 3 })
    assert.equal("DatabaseConfig: unknown option 'zzzzzzzzzz'", err_of { zzzzzzzzzz = 1 })
  end)

  it("parses a URL with an awkward password exactly, and masks it", function()
    local pw = "p@ss:w/rd%+ '\"x"
    local enc = pw:gsub("[^%w]", function(ch) return string.format("%%%02X", ch:byte()) end)
    local c = DatabaseConfig { url = "postgresql://app:" .. enc .. "@db.example:6543/ledger?sslmode=require&application_name=job" }
    assert.equal(pw, c.password)
    assert.equal(pw, c:conninfo().password)
    assert.same({ "db.example", 6543, "ledger", "app", "require", "job" },
                { c.host, c.port, c.database, c.user, c.sslmode, c.application_name })
    local shown = tostring(c)
    assert.equal("DatabaseConfig(postgresql://app:***@db.example:6543/ledger?sslmode=require, pool 10+5)", shown)
    assert.is_nil(shown:find("ss:w", 1, true))
  end)

  it("lets explicit fields override the URL", function()
    local c = DatabaseConfig { url = "postgresql://u@h/d", pool_size = 3, database = "other" }
    assert.equal("other", c.database)
    assert.equal(3, c.pool_size)
    assert.equal("h", c.host)
  end)

  it("keeps the password out of URL errors", function()
    local err = err_of { url = "postgresql://u:s3cr3t-PW@[::1/db" }
    assert.is_nil(err:find("s3cr3t", 1, true))
    err = err_of { url = "postgresql://u:s3cr3t-PW@h:99999/db" }
    assert.is_nil(err:find("s3cr3t", 1, true))
    err = err_of { url = "mysql://u:s3cr3t-PW@h/db" }
    assert.is_nil(err:find("s3cr3t", 1, true))
  end)

  it("masks unix-socket and multi-host URLs", function()
    local c = DatabaseConfig { url = "postgresql://u:pw@/db?host=%2Ftmp%2Fsock&port=5433" }
    assert.equal("/tmp/sock", c.host)
    assert.equal("postgresql://u:***@/db?host=%2Ftmp%2Fsock&port=5433", c:masked_url())
    c = DatabaseConfig { url = "postgresql://u@a:1,b:2/db?target_session_attrs=read-write" }
    assert.equal("postgresql://u@a:1,b:2/db?target_session_attrs=read-write", c:masked_url())
  end)

  it("loads a config file in an empty environment", function()
    local path = os.tmpname()
    local f = io.open(path, "w")
    f:write('return { host = "filehost", pool_size = 4, password = os.getenv("HOME") and "x" or "y" }')
    f:close()
    local t = config.load_file(path)
    assert.equal("filehost", t.host)
    assert.equal(4, DatabaseConfig(t).pool_size)
    f = io.open(path, "w")
    f:write('io.write("no") return {}')
    f:close()
    local ok, err = pcall(config.load_file, path)
    assert.is_false(ok)
    assert.matches("attempt to index a nil value", err)
    os.remove(path)
  end)
end)
