-- Connection URLs (core.parse_url) and secret redaction (core.redact).
local core = require "caracal.core"

-- The password used in every failing URL below: no error may show it.
local SECRET = "s3cr3t-PW"

-- Parse a URL that must fail; return its message after checking that it
-- shows neither the password nor the URL it came from.
local function parse_error(url)
  local params, message = core.parse_url(url)
  assert.is_nil(params)
  assert.is_string(message)
  assert.is_nil(message:find(SECRET, 1, true), "password in: " .. message)
  assert.is_nil(message:find(url, 1, true), "URL in: " .. message)
  return message
end

describe("core.parse_url", function()
  it("parses a simple URL into libpq keywords", function()
    assert.are.same({
      host = "db.example.com",
      port = "5433",
      dbname = "app",
      user = "bob",
      password = "hunter2",
    }, core.parse_url("postgresql://bob:hunter2@db.example.com:5433/app"))
  end)

  it("accepts the postgres:// scheme too, and either scheme in any case", function()
    assert.are.same({ host = "localhost", dbname = "app" }, core.parse_url("postgres://localhost/app"))
    assert.are.same({ host = "localhost", dbname = "app" }, core.parse_url("PostgreSQL://localhost/app"))
  end)

  it("leaves out every part that is absent", function()
    assert.are.same({}, core.parse_url("postgresql://"))
    assert.are.same({ host = "localhost" }, core.parse_url("postgresql://localhost"))
    assert.are.same({ dbname = "app" }, core.parse_url("postgresql:///app"))
    assert.are.same({ host = "h", user = "bob" }, core.parse_url("postgresql://bob@h"))
    -- Empty user, password and database name count as absent, as in libpq.
    assert.are.same({ host = "h", user = "bob" }, core.parse_url("postgresql://bob:@h/"))
    assert.are.same({ host = "h", password = "pw" }, core.parse_url("postgresql://:pw@h"))
    assert.are.same({ port = "5432" }, core.parse_url("postgresql://:5432"))
  end)

  describe("passwords", function()
    local awkward = {
      { char = "@", encoded = "%40" },
      { char = ":", encoded = "%3A" },
      { char = "/", encoded = "%2F" },
      { char = "%", encoded = "%25" },
      { char = "+", encoded = "%2B" },
      { char = " ", encoded = "%20" },
      { char = "'", encoded = "%27" },
      { char = '"', encoded = "%22" },
    }
    for _, case in ipairs(awkward) do
      it("decodes an encoded " .. case.char .. " exactly", function()
        local url = "postgresql://bob:a" .. case.encoded .. "b@h/db"
        assert.are.same({ host = "h", dbname = "db", user = "bob", password = "a" .. case.char .. "b" },
          core.parse_url(url))
      end)
    end

    it("decodes a password made of every awkward character", function()
      local t = core.parse_url("postgresql://bob:p%40ss%3Aw%2Frd%25%2B%20%27%22@db.example.com:5433/app")
      assert.are.equal("p@ss:w/rd%+ '\"", t.password)
      assert.are.equal("bob", t.user)
      assert.are.equal("db.example.com", t.host)
      assert.are.equal("5433", t.port)
      assert.are.equal("app", t.dbname)
    end)

    it("accepts lowercase hex in escapes", function()
      assert.are.equal("p@ss:w/rd", core.parse_url("postgresql://u:p%40ss%3aw%2frd@h").password)
    end)

    it("keeps + as + (libpq does not read it as a space)", function()
      assert.are.equal("a+b", core.parse_url("postgresql://u:a+b@h").password)
    end)

    it("splits the userinfo at the last @ so an unencoded @ still works", function()
      assert.are.same({ host = "h", user = "u", password = "p@ss" }, core.parse_url("postgresql://u:p@ss@h"))
    end)

    it("splits user from password at the first colon", function()
      assert.are.same({ host = "h", user = "u", password = "a:b" }, core.parse_url("postgresql://u:a:b@h"))
    end)

    it("decodes the user name too", function()
      assert.are.equal("me@corp", core.parse_url("postgresql://me%40corp:x@h").user)
    end)
  end)

  describe("hosts", function()
    it("joins several hosts and their ports, one port entry per host", function()
      assert.are.same({ host = "h1,h2,h3", port = "5432,5433,5434", dbname = "db" },
        core.parse_url("postgresql://h1:5432,h2:5433,h3:5434/db"))
    end)

    it("leaves empty port entries where a host has none, as libpq does", function()
      assert.are.same({ host = "h1,h2,h3", port = "5432,,5434" }, core.parse_url("postgresql://h1:5432,h2,h3:5434"))
    end)

    it("leaves out the port list when no host has a port", function()
      assert.are.same({ host = "h1,h2", dbname = "db" }, core.parse_url("postgresql://h1,h2/db"))
    end)

    it("keeps an empty host list when two ports need two hosts", function()
      assert.are.same({ host = ",", port = "5432,5433" }, core.parse_url("postgresql://:5432,:5433"))
    end)

    it("takes IPv6 addresses in brackets and drops the brackets", function()
      assert.are.same({ host = "::1", port = "5432", dbname = "db" }, core.parse_url("postgresql://[::1]:5432/db"))
      assert.are.same({ host = "2001:db8::1,::2", port = "5433," },
        core.parse_url("postgresql://[2001:db8::1]:5433,[::2]"))
    end)

    it("decodes a percent-encoded socket directory", function()
      assert.are.same({ host = "/var/run/postgresql", dbname = "db" },
        core.parse_url("postgresql://%2Fvar%2Frun%2Fpostgresql/db"))
    end)

    it("takes a socket directory from ?host=", function()
      assert.are.same({ host = "/tmp", dbname = "db" }, core.parse_url("postgresql:///db?host=/tmp"))
    end)
  end)

  describe("query parameters", function()
    it("passes them through as keywords, decoded", function()
      assert.are.same({
        host = "h",
        dbname = "db",
        sslmode = "require",
        application_name = "my app+1",
        connect_timeout = "10",
        target_session_attrs = "read-write",
      }, core.parse_url("postgresql://h/db?sslmode=require&application_name=my%20app+1"
        .. "&connect_timeout=10&target_session_attrs=read-write"))
    end)

    it("lets a parameter override the URL part of the same name", function()
      assert.are.same({ host = "/tmp", port = "6000", dbname = "other", user = "u2", password = "p2" },
        core.parse_url("postgresql://u:p@h:5432/db?host=%2Ftmp&port=6000&dbname=other&user=u2&password=p2"))
    end)

    it("allows the password as a parameter", function()
      assert.are.same({ host = "h", user = "u", password = "a&b=c" },
        core.parse_url("postgresql://u@h?password=a%26b%3Dc"))
    end)

    it("reads JDBC's ssl=true as sslmode=require", function()
      assert.are.same({ host = "h", sslmode = "require" }, core.parse_url("postgresql://h?ssl=true"))
    end)

    it("ignores a trailing ? or &", function()
      assert.are.same({ host = "h", dbname = "db" }, core.parse_url("postgresql://h/db?"))
      assert.are.same({ host = "h", sslmode = "disable" }, core.parse_url("postgresql://h?sslmode=disable&"))
    end)
  end)

  describe("errors", function()
    it("rejects another scheme", function()
      assert.are.equal("invalid connection URL: expected postgresql:// or postgres://",
        parse_error("mysql://u:" .. SECRET .. "@h/db"))
      assert.are.equal("invalid connection URL: expected postgresql:// or postgres://",
        parse_error("host=h password=" .. SECRET))
    end)

    it("names the part with a bad percent-escape", function()
      local cases = {
        { "postgresql://b%zzob:" .. SECRET .. "@h/db", "user name" },
        { "postgresql://bob:" .. SECRET .. "%4@h/db", "password" },
        { "postgresql://bob:" .. SECRET .. "%00@h/db", "password" },
        { "postgresql://bob:" .. SECRET .. "@h%G1/db", "host" },
        { "postgresql://bob:" .. SECRET .. "@h/d%b", "database name" },
        { "postgresql://bob:" .. SECRET .. "@h/db?application_name=%", "parameter 'application_name'" },
        { "postgresql://bob:" .. SECRET .. "@h/db?password=" .. SECRET .. "%x", "parameter 'password'" },
        { "postgresql://bob:" .. SECRET .. "@h/db?ssl%mode=require", "parameter name" },
      }
      for _, case in ipairs(cases) do
        assert.are.equal("invalid connection URL: bad percent-escape in " .. case[2], parse_error(case[1]))
      end
    end)

    it("rejects an unterminated IPv6 host", function()
      assert.are.equal("invalid connection URL: unterminated IPv6 host",
        parse_error("postgresql://bob:" .. SECRET .. "@[::1:5432/db"))
    end)

    it("rejects an empty IPv6 host and junk after one", function()
      assert.are.equal("invalid connection URL: empty IPv6 host", parse_error("postgresql://bob:" .. SECRET .. "@[]/db"))
      assert.are.equal("invalid connection URL: unexpected character after IPv6 host",
        parse_error("postgresql://bob:" .. SECRET .. "@[::1]x/db"))
    end)

    it("rejects a port that is not a number in 1..65535", function()
      local cases = {
        { "@h:abc/db", "abc" },
        { "@h:0/db", "0" },
        { "@h:65536/db", "65536" },
        { "@h:-1/db", "-1" },
        { "@h1:5432,h2:x/db", "x" },
        { "@h/db?port=5432,9x", "9x" },
      }
      for _, case in ipairs(cases) do
        assert.are.equal("invalid connection URL: invalid port '" .. case[2] .. "'",
          parse_error("postgresql://bob:" .. SECRET .. case[1]))
      end
      assert.are.same({ host = "h", port = "65535", user = "bob", password = SECRET },
        core.parse_url("postgresql://bob:" .. SECRET .. "@h:65535"))
    end)

    it("rejects a parameter libpq does not know", function()
      assert.are.equal("invalid connection URL: unknown connection option 'foo'",
        parse_error("postgresql://bob:" .. SECRET .. "@h/db?sslmode=require&foo=1"))
      assert.are.equal("invalid connection URL: unknown connection option 'ssl'",
        parse_error("postgresql://bob:" .. SECRET .. "@h/db?ssl=false"))
    end)

    it("rejects a parameter without '=' or with two", function()
      assert.are.equal("invalid connection URL: missing '=' in query parameter 'sslmode'",
        parse_error("postgresql://bob:" .. SECRET .. "@h/db?sslmode"))
      assert.are.equal("invalid connection URL: missing '=' in query parameter ''",
        parse_error("postgresql://bob:" .. SECRET .. "@h/db?&sslmode=require"))
      assert.are.equal("invalid connection URL: extra '=' in query parameter 'password'",
        parse_error("postgresql://bob@h/db?password=" .. SECRET .. "=x"))
    end)

    it("quotes nothing when an unencoded / or ? seems to have cut the password", function()
      assert.are.equal("invalid connection URL: invalid port"
        .. " (not shown: percent-encode any '@', '/' or '?' in the password)",
        parse_error("postgresql://bob:s3cr3t/PW@h/db"))
      assert.are.equal("invalid connection URL: invalid port"
        .. " (not shown: percent-encode any '@', '/' or '?' in the password)",
        parse_error("postgresql://bob:s3cr3t?PW@h/db"))
    end)

    it("quotes no fragment that contains the password", function()
      assert.are.equal("invalid connection URL: unknown connection option (not shown)",
        parse_error("postgresql://bob:" .. SECRET .. "@h/db?x" .. SECRET .. "=1"))
    end)
  end)
end)

describe("core.redact", function()
  it("leaves a message without secrets unchanged", function()
    local messages = {
      "",
      "connection to server at \"db\" (10.0.0.1), port 5432 failed: FATAL:  password authentication failed for user \"bob\"",
      "host=db port=5432 dbname=app user=bob",
      "postgresql://bob@db:5432/app?sslmode=require",
      "postgresql://[::1]:5432/app",
      "see https://www.postgresql.org/docs/15/libpq-connect.html",
    }
    for _, m in ipairs(messages) do
      assert.are.equal(m, core.redact(m))
      assert.are.equal(m, core.redact(m, "hunter2"))
      assert.are.equal(m, core.redact(m, ""))
    end
  end)

  it("hides every raw occurrence of the password", function()
    assert.are.equal("login *** failed; *** again", core.redact("login hunter2 failed; hunter2 again", "hunter2"))
  end)

  it("hides the password's percent-encoded form in either hex case", function()
    local pw = "p@ss:w/rd%+ '\""
    local upper = "p%40ss%3Aw%2Frd%25%2B%20%27%22"
    local lower = "p%40ss%3aw%2frd%25%2b%20%27%22"
    assert.are.equal("a *** b", core.redact("a " .. upper .. " b", pw))
    assert.are.equal("a *** b", core.redact("a " .. lower .. " b", pw))
    assert.are.equal("a *** b", core.redact("a " .. pw .. " b", pw))
    -- Letters of the password are not hex digits: their case still counts.
    assert.are.equal("P%40SS", core.redact("P%40SS", "p@ss"))
  end)

  it("hides password=VALUE in conninfo strings even without a password", function()
    assert.are.equal("host=db password=*** user=bob", core.redact("host=db password=hunter2 user=bob"))
    assert.are.equal("host=db PASSWORD = *** user=bob", core.redact("host=db PASSWORD = hunter2 user=bob"))
    assert.are.equal("host=db password=*** user=bob", core.redact("host=db password='it\\'s a secret' user=bob"))
    assert.are.equal("password=***", core.redact("password='unterminated and secret"))
    assert.are.equal("?sslmode=require&password=***&user=bob", core.redact("?sslmode=require&password=hunter2&user=bob"))
    assert.are.equal("sslpassword=*** PGPASSWORD=***", core.redact("sslpassword=k3y PGPASSWORD=hunter2"))
  end)

  it("hides password= in libpq-style messages", function()
    -- An unquoted value runs to whitespace, so a closing quote goes too.
    assert.are.equal('invalid connection option "password=***',
      core.redact('invalid connection option "password=hunter2"'))
    assert.are.equal("missing \"=\" after \"password\" in connection info string",
      core.redact("missing \"=\" after \"password\" in connection info string"))
  end)

  it("hides the secret of scheme://user:secret@host even without a password", function()
    assert.are.equal("connect to postgresql://bob:***@db:5432/app failed",
      core.redact("connect to postgresql://bob:hunter2@db:5432/app failed"))
    assert.are.equal("postgres://:***@[::1]/db", core.redact("postgres://:pw@[::1]/db"))
    assert.are.equal("redis://u:***@h?x=1 and https://a:***@b", core.redact("redis://u:p@w@h?x=1 and https://a:b@b"))
    assert.are.equal("postgresql://bob:***@h1:5432,h2:5433/app", core.redact("postgresql://bob:s@c:r@t@h1:5432,h2:5433/app"))
  end)

  it("hides the user name too when it equals the password", function()
    assert.are.equal("postgresql://***:***@h/db", core.redact("postgresql://admin:admin@h/db", "admin"))
  end)

  it("hides an encoded password inside a URL and a parameter", function()
    local pw = "p@ss/w"
    assert.are.equal("postgresql://***@h/db?password=***",
      core.redact("postgresql://p%40ss%2Fw@h/db?password=p%40ss%2fw", pw))
  end)

  it("hides a password of one character", function()
    assert.are.equal("***b***", core.redact("aba", "a"))
  end)
end)
