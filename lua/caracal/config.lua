--- Database configuration: `DatabaseConfig`, URLs, config files.
--
-- A configuration is validated as a whole when it is made: every value is
-- checked with a precise message, unknown keys are errors (with a
-- suggestion), and the password never appears in a message or a tostring.
--
--    local cfg = DatabaseConfig{host = "db", password = "s3cret", pool_size = 20}
--    local cfg = DatabaseConfig{url = "postgresql://app:s3cret@db:5432/caracal?sslmode=require"}
--    print(cfg)   --> DatabaseConfig(postgresql://app:***@db:5432/caracal?sslmode=require, pool 20+5)
--
-- Resolution order, lowest first: the seed's defaults (localhost, 5432,
-- caracal, caracal); libpq's own PG* environment variables (when one is
-- set, its default is left to libpq); the URL; explicit fields.
-- @module caracal.config
local core = require "caracal.core"

local M = {}

local Config = {}
Config.__index = Config
Config.__name = "caracal.DatabaseConfig"

--- The seed's defaults, plus connection hygiene that a ledger needs:
-- TCP keepalives tuned so a dead peer is noticed in about ten seconds
-- (idle 5 s, then 3 probes 2 s apart), and a bound on unacknowledged writes.
M.defaults = {
  host = "localhost", port = 5432, database = "caracal", user = "caracal", password = "",
  pool_size = 10, max_overflow = 5, pool_timeout = 30, pool_recycle = 3600, echo = false,
  pool_pre_ping = false, reset_on_return = "auto",
  application_name = "caracal", connect_timeout = 10,
  keepalives = true, keepalives_idle = 5, keepalives_interval = 2, keepalives_count = 3,
  tcp_user_timeout = 10000,
}

-- libpq's environment variable for each field whose default libpq can supply.
local PG_ENV = { host = "PGHOST", port = "PGPORT", database = "PGDATABASE", user = "PGUSER",
                 password = "PGPASSWORD", sslmode = "PGSSLMODE", application_name = "PGAPPNAME",
                 connect_timeout = "PGCONNECT_TIMEOUT" }

local SSLMODES = { disable = true, allow = true, prefer = true, require = true,
                   ["verify-ca"] = true, ["verify-full"] = true }
local RESETS = { auto = true, always = true, none = true }

local function fail(msg, ...)
  error("DatabaseConfig: " .. string.format(msg, ...), 0)
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local function integer(min, max)
  return function(key, v)
    if math.type(v) ~= "integer" or v < min or (max and v > max) then
      local range = max and string.format("between %d and %d", min, max) or (">= " .. min)
      if key == "max_overflow" then range = ">= 0 (or -1 for no limit)" end
      fail("%s must be an integer %s, got %s", key, range, show(v))
    end
    return v
  end
end

local function seconds(min)
  return function(key, v)
    if type(v) ~= "number" or v ~= v or v < min or v == math.huge then
      fail("%s must be a number of seconds >= %s, got %s", key, tostring(min), show(v))
    end
    return v
  end
end

local function boolean(key, v)
  if type(v) ~= "boolean" then fail("%s must be true or false, got %s", key, show(v)) end
  return v
end

local function text(max)
  return function(key, v)
    if type(v) ~= "string" then fail("%s must be a string, got %s", key, type(v)) end
    if v:find("\0", 1, true) then fail("%s must not contain a NUL byte", key) end
    if max and #v > max then fail("%s must be at most %d bytes, got %d", key, max, #v) end
    return v
  end
end

local function secret(key, v)
  if type(v) ~= "string" then fail("%s must be a string, got %s", key, type(v)) end
  if v:find("\0", 1, true) then fail("%s must not contain a NUL byte", key) end
  return v
end

local function port(key, v)
  -- One port, or a comma-separated list matching a multi-host `host`.
  if math.type(v) == "integer" then
    if v < 1 or v > 65535 then fail("%s must be an integer between 1 and 65535, got %d", key, v) end
    return v
  end
  if type(v) == "string" and v ~= "" then
    for p in (v .. ","):gmatch("([^,]*),") do
      local n = tonumber(p)
      if p ~= "" and (not n or math.type(n) ~= "integer" or n < 1 or n > 65535) then
        fail("%s must be an integer between 1 and 65535, got %s", key, show(v))
      end
    end
    return v
  end
  fail("%s must be an integer between 1 and 65535, got %s", key, show(v))
end

local function one_of(set, what)
  return function(key, v)
    if not set[v] then fail("%s must be one of %s, got %s", key, what, show(v)) end
    return v
  end
end

-- Take Caracal's own query parameter `pooler` out of a URL (libpq does
-- not know it): the URL without it, and its value or nil.
local function strip_pooler(url)
  local base, query = url:match("^([^?#]*)%?([^#]*)")
  if not base then return url, nil end
  local kept, pooler = {}, nil
  for part in query:gmatch("[^&]+") do
    local v = part:match("^pooler=(.*)$")
    if v then pooler = v else kept[#kept + 1] = part end
  end
  if not pooler then return url, nil end
  return base .. (#kept > 0 and ("?" .. table.concat(kept, "&")) or ""), pooler
end

local function parse_url(url)
  return core.parse_url((strip_pooler(url)))
end

-- One URL, or a list of URLs (each may list several hosts).
local function url_list(key, v)
  local list = type(v) == "string" and { v } or v
  if type(list) ~= "table" or #list == 0 then
    fail("%s must be a URL or a non-empty list of URLs, got %s", key, type(v))
  end
  for i, u in ipairs(list) do
    if type(u) ~= "string" then fail("%s[%d] must be a URL string, got %s", key, i, type(u)) end
    local ok, err = parse_url(u)
    if not ok then fail("%s[%d]: %s", key, i, err) end
  end
  for k in pairs(list) do
    if math.type(k) ~= "integer" then fail("%s must be a list of URLs", key) end
  end
  return list
end

local function libpq_options(key, v)
  if type(v) ~= "table" then fail("%s must be a table of libpq keywords, got %s", key, type(v)) end
  for k, val in pairs(v) do
    if type(k) ~= "string" then fail("%s keys must be strings", key) end
    if type(val) ~= "string" and math.type(val) ~= "integer" then
      fail("%s.%s must be a string or an integer, got %s", key, k, type(val))
    end
  end
  return v
end

--- Every key a configuration accepts, with its validator.
local FIELDS = {
  url = text(), host = text(), port = port, database = text(63), user = text(63),
  password = secret,
  pool_size = integer(1), max_overflow = integer(-1),
  pool_timeout = seconds(0), pool_recycle = seconds(-1), pool_pre_ping = boolean,
  reset_on_return = one_of(RESETS, "'auto', 'always', 'none'"),
  echo = boolean, application_name = text(63), sslmode = one_of(SSLMODES,
    "disable, allow, prefer, require, verify-ca, verify-full"),
  sslrootcert = text(), sslcert = text(), sslkey = text(),
  connect_timeout = integer(0, 3600), keepalives = boolean, keepalives_idle = integer(1, 86400),
  keepalives_interval = integer(1, 86400), keepalives_count = integer(1, 1000),
  tcp_user_timeout = integer(0, 86400000), target_session_attrs = text(),
  statement_timeout = integer(0, 2147483647), lock_timeout = integer(0, 2147483647),
  idle_in_transaction_session_timeout = integer(0, 2147483647),
  options = text(), libpq = libpq_options, pooler = one_of({ none = true, transaction = true,
    session = true }, "'none', 'session', 'transaction'"),
  replicas = url_list, read_url = text(),
}

-- URL query parameters that are fields here (the rest go to libpq as is).
local URL_FIELDS = { sslmode = true, application_name = true, connect_timeout = "integer",
  keepalives = "bool01", keepalives_idle = "integer", keepalives_interval = "integer",
  keepalives_count = "integer", tcp_user_timeout = "integer", target_session_attrs = true,
  sslrootcert = true, sslcert = true, sslkey = true, options = true, pooler = true }

local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function suggest(key)
  local best, bestd
  for k in pairs(FIELDS) do
    local d = distance(key, k)
    if not bestd or d < bestd then best, bestd = k, d end
  end
  if bestd and bestd <= 3 then return string.format(" (did you mean '%s'?)", best) end
  return ""
end

-- Parse a URL into fields and extra libpq keywords.
local function from_url(url)
  local stripped, pooler = strip_pooler(url)
  local params, err = core.parse_url(stripped)
  if not params then fail("%s", err) end
  if pooler then params.pooler = pooler end
  local fields, extra = {}, {}
  for k, v in pairs(params) do
    if k == "host" or k == "user" or k == "password" then fields[k] = v
    elseif k == "dbname" then fields.database = v
    elseif k == "port" then
      fields.port = math.tointeger(tonumber(v)) or v
    elseif URL_FIELDS[k] == "integer" then
      local n = math.tointeger(tonumber(v))
      if not n then fail("URL parameter %s must be an integer, got %s", k, show(v)) end
      fields[k] = n
    elseif URL_FIELDS[k] == "bool01" then
      fields[k] = v ~= "0"
    elseif URL_FIELDS[k] then fields[k] = v
    else extra[k] = v end
  end
  return fields, extra
end

--- Make a validated configuration.
-- @tparam[opt] table t fields (see `caracal.config.defaults`), or `url`
-- @treturn DatabaseConfig
-- @raise a message naming the field, the value and the rule
function M.DatabaseConfig(t)
  t = t or {}
  if getmetatable(t) == Config then return t end
  if type(t) ~= "table" then fail("expected a table of settings, got %s", type(t)) end
  local given = {}
  for k, v in pairs(t) do
    if type(k) ~= "string" then fail("keys must be strings, got %s", type(k)) end
    -- The seed's Python used `type=`; a model-style alias is not accepted
    -- here, every key must be a known one.
    local check = FIELDS[k]
    if not check then fail("unknown option '%s'%s", k, suggest(k)) end
    given[k] = check(k, v)
  end
  local cfg = setmetatable({ explicit = {}, libpq = {} }, Config)
  local url_fields, url_extra = {}, {}
  if given.url then url_fields, url_extra = from_url(given.url) end
  for k, v in pairs(url_extra) do cfg.libpq[k] = v end
  for k, v in pairs(given.libpq or {}) do cfg.libpq[k] = tostring(v) end
  for k, v in pairs(url_fields) do
    cfg[k] = FIELDS[k] and FIELDS[k](k, v) or v
    cfg.explicit[k] = true
  end
  for k, v in pairs(given) do
    if k ~= "url" and k ~= "libpq" then
      cfg[k] = v
      cfg.explicit[k] = true
    end
  end
  for k, v in pairs(M.defaults) do
    if cfg[k] == nil then
      local env = PG_ENV[k]
      if not (env and os.getenv(env)) then cfg[k] = v end
    end
  end
  if cfg.max_overflow == -1 then cfg.max_overflow = -1 end -- -1: no limit (documented)
  if cfg.pooler == "transaction" then
    if cfg.options or cfg.libpq.options then
      fail("options cannot pass a transaction pooler (PgBouncer refuses the startup parameter, or ignores it " ..
           "when told to): with pooler = 'transaction', set statement_timeout, lock_timeout and " ..
           "idle_in_transaction_session_timeout here (they are applied with SET LOCAL in each transaction)")
    end
    if cfg.reset_on_return == "always" then
      fail("reset_on_return = 'always' resets the session, which a transaction pooler does not keep: use " ..
           "'auto' (a returned connection is rolled back when needed) with pooler = 'transaction'")
    end
  end
  if cfg.read_url then
    local ok, err = parse_url(cfg.read_url)
    if not ok then fail("read_url: %s", err) end
  end
  return cfg
end

--- Is this configuration's pooler a transaction pooler (PgBouncer with
-- pool_mode = transaction)? Then nothing may rely on session state.
function Config:transaction_pooler()
  return self.pooler == "transaction"
end

-- What decoding and the configured timeouts need, as `name=value` pairs
-- (the server settings of `options`, or of SET LOCAL behind a pooler).
function Config:server_settings()
  local list = { { "DateStyle", "ISO, YMD" }, { "TimeZone", "UTC" }, { "IntervalStyle", "postgres" },
                 { "extra_float_digits", "3" } }
  if self.statement_timeout then list[#list + 1] = { "statement_timeout", tostring(self.statement_timeout) } end
  if self.lock_timeout then list[#list + 1] = { "lock_timeout", tostring(self.lock_timeout) } end
  if self.idle_in_transaction_session_timeout then
    list[#list + 1] = { "idle_in_transaction_session_timeout", tostring(self.idle_in_transaction_session_timeout) }
  end
  return list
end

--- The statements that open a transaction: `BEGIN` (or `BEGIN READ
-- ONLY`), and behind a transaction pooler, where connection options
-- cannot be sent, the server settings as SET LOCAL in the same round trip.
-- @tparam boolean readonly
-- @treturn string
function Config:begin_sql(readonly)
  local sql = readonly and "BEGIN READ ONLY" or "BEGIN"
  if not self:transaction_pooler() then return sql end
  local parts = { sql }
  for _, kv in ipairs(self:server_settings()) do
    parts[#parts + 1] = string.format("SET LOCAL %s = '%s'", kv[1], kv[2])
  end
  return table.concat(parts, "; ")
end

--- libpq connection keywords for this configuration (password included;
-- it goes only to PQconnectdbParams, never to a message).
function Config:conninfo()
  local ci = {}
  for k, v in pairs(self.libpq) do ci[k] = v end
  ci.host = self.host
  ci.port = self.port and tostring(self.port) or nil
  ci.dbname = self.database
  ci.user = self.user
  if self.password and self.password ~= "" then ci.password = self.password end
  ci.application_name = self.application_name
  ci.sslmode = self.sslmode
  ci.sslrootcert, ci.sslcert, ci.sslkey = self.sslrootcert, self.sslcert, self.sslkey
  ci.connect_timeout = self.connect_timeout and tostring(self.connect_timeout) or nil
  ci.target_session_attrs = self.target_session_attrs
  -- Several hosts: writes need the primary, so after a failover libpq
  -- skips the old primary and the standbys and finds the new one.
  if not ci.target_session_attrs and not self.libpq.target_session_attrs and
     type(self.host) == "string" and self.host:find(",", 1, true) then
    ci.target_session_attrs = "read-write"
  end
  if self.keepalives ~= nil then ci.keepalives = self.keepalives and "1" or "0" end
  ci.keepalives_idle = self.keepalives_idle and tostring(self.keepalives_idle)
  ci.keepalives_interval = self.keepalives_interval and tostring(self.keepalives_interval)
  ci.keepalives_count = self.keepalives_count and tostring(self.keepalives_count)
  ci.tcp_user_timeout = self.tcp_user_timeout and tostring(self.tcp_user_timeout)
  -- Pin what decoding relies on, as the session's defaults (so RESET ALL
  -- at check-in restores them): ISO dates, UTC for naive timestamps.
  -- A transaction pooler refuses the options startup parameter: there
  -- each transaction sets them (begin_sql).
  if self:transaction_pooler() then return ci end
  local opts = {}
  for _, kv in ipairs(self:server_settings()) do
    opts[#opts + 1] = "-c " .. kv[1] .. "=" .. kv[2]:gsub(", ", ",")
  end
  if self.options then opts[#opts + 1] = self.options end
  ci.options = table.concat(opts, " ")
  return ci
end

-- The hosts and ports of a parsed URL, as lists.
local function hosts_of(fields)
  local hs, ps = {}, {}
  for h in ((fields.host or "") .. ","):gmatch("([^,]*),") do hs[#hs + 1] = h end
  local port = fields.port and tostring(fields.port) or ""
  for p in (port .. ","):gmatch("([^,]*),") do ps[#ps + 1] = p end
  local single = (#ps == 1 and ps[1] ~= "") and ps[1] or nil -- one port for every host, as libpq reads it
  for i = 1, #hs do
    if ps[i] == nil or ps[i] == "" then ps[i] = single or "" end
  end
  return hs, ps
end

--- The configuration of the pool for read-only work, or nil when no
-- replica is configured. `read_url` is used as it is (fields it leaves
-- out come from this configuration); `replicas` become one multi-host
-- connection: the replicas first, then this configuration's own hosts
-- as the last resort, with target_session_attrs=prefer-standby, so reads
-- go to a standby while one answers and to the primary otherwise.
-- @treturn DatabaseConfig|nil
function Config:read_config()
  if not self.replicas and not self.read_url then return nil end
  local t = { libpq = {} }
  for k in pairs(FIELDS) do
    if self.explicit[k] and k ~= "url" and k ~= "libpq" and k ~= "replicas" and k ~= "read_url" then
      t[k] = self[k]
    end
  end
  for k, v in pairs(self.libpq) do t.libpq[k] = v end
  t.target_session_attrs, t.libpq.target_session_attrs = nil, nil
  if self.read_url then
    local fields, extra = from_url(self.read_url)
    for k, v in pairs(fields) do t[k] = v end
    for k, v in pairs(extra) do t.libpq[k] = v end
    t.target_session_attrs = t.target_session_attrs or "prefer-standby"
    return M.DatabaseConfig(t)
  end
  local hosts, ports = {}, {}
  local shared = {}
  for i, u in ipairs(self.replicas) do
    local fields, extra = from_url(u)
    local hs, ps = hosts_of(fields)
    for j, h in ipairs(hs) do
      hosts[#hosts + 1] = h
      ports[#ports + 1] = ps[j] -- "" is libpq's default port
    end
    -- One connection string: the replicas share a database, a user and a password.
    for _, k in ipairs({ "database", "user", "password" }) do
      if fields[k] ~= nil then
        if shared[k] ~= nil and shared[k] ~= fields[k] then
          fail("replicas[%d] names another %s than replicas[1]: list replicas of one database with the same " ..
               "credentials, or give read_url", i, k)
        end
        shared[k] = fields[k]
      end
    end
    for k, v in pairs(extra) do t.libpq[k] = v end
  end
  for k, v in pairs(shared) do t[k] = v end
  local hs, ps = hosts_of({ host = self.host, port = self.port })
  for j, h in ipairs(hs) do
    hosts[#hosts + 1] = h
    ports[#ports + 1] = ps[j]
  end
  t.host = table.concat(hosts, ",")
  t.port = table.concat(ports, ",")
  t.target_session_attrs = "prefer-standby"
  return M.DatabaseConfig(t)
end

--- Settings for `core.Pool`.
function Config:pool_settings()
  return {
    conninfo = self:conninfo(), pool_size = self.pool_size, max_overflow = self.max_overflow,
    pool_timeout = self.pool_timeout, pool_recycle = self.pool_recycle,
    pre_ping = self.pool_pre_ping, reset_on_return = self.reset_on_return,
  }
end

local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

--- The URL of this configuration with the password shown as `***`.
function Config:masked_url()
  local userinfo = encode(self.user or "")
  if self.password and self.password ~= "" then userinfo = userinfo .. ":***" end
  local host = self.host or ""
  local query = {}
  if host:sub(1, 1) == "/" then
    query[#query + 1] = "host=" .. encode(host)
    host = ""
  elseif host:find(":", 1, true) and not host:find(",", 1, true) then
    host = "[" .. host .. "]"
  end
  local hostport = host
  if self.port and host ~= "" then
    if type(self.port) == "string" and self.port:find(",", 1, true) then
      -- multi-host: pair each host with its port
      local hs, ps = {}, {}
      for h in (self.host .. ","):gmatch("([^,]*),") do hs[#hs + 1] = h end
      for p in (self.port .. ","):gmatch("([^,]*),") do ps[#ps + 1] = p end
      for i, h in ipairs(hs) do hs[i] = (ps[i] and ps[i] ~= "") and (h .. ":" .. ps[i]) or h end
      hostport = table.concat(hs, ",")
    else
      hostport = host .. ":" .. tostring(self.port)
    end
  elseif self.port then
    query[#query + 1] = "port=" .. tostring(self.port)
  end
  for _, k in ipairs({ "sslmode", "target_session_attrs", "pooler" }) do
    if self[k] then query[#query + 1] = k .. "=" .. encode(self[k]) end
  end
  local url = "postgresql://" .. (userinfo ~= "" and (userinfo .. "@") or "") .. hostport ..
              "/" .. encode(self.database or "")
  if #query > 0 then url = url .. "?" .. table.concat(query, "&") end
  return url
end

function Config:__tostring()
  local overflow = self.max_overflow == -1 and "unlimited" or tostring(self.max_overflow)
  local replicas = ""
  if self.replicas then
    replicas = string.format(", %d replica URL%s", #self.replicas, #self.replicas == 1 and "" or "s")
  elseif self.read_url then
    replicas = ", read_url"
  end
  return string.format("DatabaseConfig(%s, pool %d+%s%s)", self:masked_url(), self.pool_size, overflow, replicas)
end

--- Load a configuration file: a Lua file returning a table of settings.
-- It runs in text mode with an empty environment except `os.getenv`, so
-- a secret can come from the environment: `password = os.getenv("DB_PW")`.
-- @tparam string path
-- @treturn table settings (not yet validated)
function M.load_file(path)
  local f, err = io.open(path, "r")
  if not f then fail("cannot read config file %s: %s", path, err) end
  local src = f:read("a")
  f:close()
  local env = { os = { getenv = os.getenv }, tonumber = tonumber, tostring = tostring }
  local chunk, perr = load(src, "@" .. path, "t", env)
  if not chunk then fail("config file %s: %s", path, perr) end
  local ok, t = pcall(chunk)
  if not ok then fail("config file %s: %s", path, tostring(t)) end
  if type(t) ~= "table" then fail("config file %s must return a table, got %s", path, type(t)) end
  return t
end

--- The configuration file in force: `$CARACAL_CONFIG`, else
-- `caracal.config.lua` in the current folder when it exists.
-- @treturn string|nil path
function M.default_file()
  local path = os.getenv("CARACAL_CONFIG")
  if path and path ~= "" then return path end
  local f = io.open("caracal.config.lua", "r")
  if f then f:close() return "caracal.config.lua" end
  return nil
end

--- Resolve the configuration the way `initialize_connection_manager()`
-- does with no argument: `CARACAL_DATABASE_URL` (over the file's url), the
-- config file, else nil (the caller then uses the local cluster).
-- @tparam[opt] string file an explicit config file (`--config`)
-- @treturn DatabaseConfig|nil
function M.resolve(file)
  file = file or M.default_file()
  local settings = file and M.load_file(file) or nil
  local url = os.getenv("CARACAL_DATABASE_URL")
  if url and url ~= "" then
    settings = settings or {}
    -- The environment URL replaces every connection field of the file.
    for _, k in ipairs({ "host", "port", "database", "user", "password" }) do settings[k] = nil end
    settings.url = url
  end
  if not settings then return nil end
  return M.DatabaseConfig(settings)
end

M.Config = Config
return M
