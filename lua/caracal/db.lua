--- Connection manager, sessions and transaction scopes.
--
-- The names are the seed's: `DatabaseConfig`, `initialize_connection_manager`,
-- `get_connection_manager`, `close_connection_manager`, `session_scope`,
-- `health_check`, `get_pool_status`. Lua idioms are added, not
-- substituted: `<close>` sessions and nil for "not found".
--
--    local db = require "caracal.db"
--    local manager = db.initialize_connection_manager()   -- env, config file or local cluster
--    manager:session_scope(function(session)
--      session:execute("insert into t(x) values ($1)", 42)
--    end)                                                  -- committed, or rolled back and re-raised
--
-- Transaction outcome (tclsqlite's rule): body failed? x outermost? gives
-- COMMIT, ROLLBACK, RELEASE SAVEPOINT, or ROLLBACK TO + RELEASE. A COMMIT
-- the server answers with ROLLBACK (the transaction had failed) is an
-- error, never a success; a connection lost during COMMIT is reported
-- with `outcome = "unknown"`.
--
-- Scaling (README "Scaling"): with `replicas` or `read_url` in the
-- configuration, read-only sessions (`session{readonly = true}`, `caracal
-- --read-only`) use a second pool on the standbys; everything else, and
-- `replica = false`, uses the primary's. With `pooler = "transaction"`
-- (PgBouncer), nothing relies on session state (caracal.pooler).
-- @module caracal.db
local core = require "caracal.core"
local config = require "caracal.config"

local M = {}

M.DatabaseConfig = config.DatabaseConfig

-- The first stack frame outside Caracal's own Lua files: "chunk:line".
local function user_where(level)
  level = (level or 2) + 1
  while true do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    if info.what ~= "C" and not info.source:find("caracal/[%w_]+%.lua$")
       and not info.source:find("caracal/tasks/") then
      return info.short_src .. ":" .. (info.currentline or 0)
    end
    level = level + 1
  end
end
M.user_where = user_where

-- Attach where the user's code was to a structured error; return it.
local function locate(err)
  if core.is_error(err) then
    local w = user_where(2)
    if w then err.where = w end
  end
  return err
end

local function raise(fields)
  error(locate(core.Error(fields)), 0)
end

---------------------------------------------------------------------------
-- Session
---------------------------------------------------------------------------

--- A unit of work on one pooled connection. The connection is taken at
-- first use and returned by `close` (or `<close>`). The first statement
-- begins a transaction; `commit` and `rollback` end it.
-- @type Session
local Session = {}
Session.__index = Session
Session.__name = "caracal.Session"

local function new_session(manager, opts)
  local readonly = manager.readonly or false
  if opts and opts.readonly ~= nil then readonly = opts.readonly end
  return setmetatable({
    manager = manager, conn = nil, depth = 0, lost = false, closed = false,
    holder = opts and opts.holder, readonly = readonly,
    replica = not (opts and opts.replica == false),
    pending = {},
  }, Session)
end

local function check_open(self)
  if self.closed then error("attempt to use a closed session", 3) end
end

-- A connection refused by a pooler for its startup parameters: say what to do.
local function pooler_hint(err)
  if core.is_error(err) and not err.hint and tostring(err.message):find("unsupported startup parameter", 1, true) then
    err.hint = "a connection pooler refused Caracal's connection options: behind PgBouncer in transaction " ..
               "mode, set pooler = 'transaction' (or add ?pooler=transaction to the URL)"
  end
  return err
end

-- The session's connection, checked out on first use: from the replicas'
-- pool for a read-only session when there is one, else the primary's.
function Session:connection()
  check_open(self)
  if not self.conn then
    local manager = self.manager
    local pool = (self.readonly and self.replica and manager.read_pool) or manager.pool
    local ok, conn = pcall(pool.checkout, pool, self.holder or user_where(2) or "?")
    if not ok then error(locate(pooler_hint(conn)), 0) end
    if manager.pooled then conn:set_pooled(true) end
    self.conn = conn
  end
  return self.conn
end

-- Behind a transaction pooler, refuse what would need a session.
local function check_pooler(self, sql)
  if self.manager.pooled then
    local ok, err = pcall(require("caracal.pooler").check, sql)
    if not ok then error(locate(err), 0) end
  end
end

local function echo(self, sql, n)
  if self.manager.config.echo then
    io.stderr:write(string.format("[caracal] %s%s\n", sql,
      n > 0 and string.format("  -- %d parameter%s", n, n == 1 and "" or "s") or ""))
  end
end

-- Call a Connection method (execute, exec_script: both return rows,
-- count, tag). On failure, note a lost connection and raise the error
-- located at the user's line.
local function on_conn(self, method, sql, ...)
  local conn = self.conn
  local ok, rows, count, tag = pcall(method, conn, sql, ...)
  if not ok then
    if conn:is_lost() then self.lost = true end
    error(locate(rows), 0)
  end
  return rows, count, tag
end

-- Run a control statement (BEGIN, COMMIT, SAVEPOINT ...) with the simple
-- protocol: one round trip, nothing to prepare.
local function control(self, sql)
  local conn = self:connection()
  echo(self, sql, 0)
  local _, _, tag = on_conn(self, conn.exec_script, sql)
  return tag
end

local function ensure_transaction(self)
  if self.lost then
    raise { sqlstate = "08006", connection_lost = true,
            message = "the connection was lost inside this transaction; it was rolled back by " ..
                      "the server: roll back (a scope does this) before using the session again" }
  end
  if self.depth == 0 then
    -- BEGIN (READ ONLY); behind a transaction pooler, with the server
    -- settings as SET LOCAL in the same round trip.
    control(self, self.readonly and self.manager.begin_ro or self.manager.begin_rw)
    self.depth = 1
  end
end

--- Run one statement with `$1..$n` parameters sent separately from the SQL.
-- @tparam string sql
-- @param ... parameter values (nil is NULL)
-- @treturn table rows (each a table keyed by column name; `rows.columns`
-- lists the column names in order)
-- @treturn integer rows affected
-- @treturn string the command tag
-- @raise caracal.Error on a server error
function Session:execute(sql, ...)
  check_open(self)
  if type(sql) ~= "string" then error("bad argument #1 to 'execute' (string expected, got " .. type(sql) .. ")", 2) end
  -- The wire protocol counts parameters in 16 bits: refuse before anything is sent.
  check_pooler(self, sql)
  if #self.pending > 0 and self.flush then self:flush() end
  ensure_transaction(self)
  echo(self, sql, select("#", ...))
  return on_conn(self, self.conn.execute, sql, ...)
end

--- The first row of a statement, or nil.
function Session:first(sql, ...)
  local rows = self:execute(sql, ...)
  return rows[1]
end

--- The first column of the first row, or nil.
function Session:scalar(sql, ...)
  local rows = self:execute(sql, ...)
  local row = rows[1]
  if not row then return nil end
  return row[rows.columns[1]]
end

--- Run SQL text that may hold several statements, with no parameters
-- (DDL, scripts). Rows of the last statement are returned.
function Session:execute_script(sql)
  check_open(self)
  check_pooler(self, sql)
  ensure_transaction(self)
  echo(self, sql, 0)
  return on_conn(self, self.conn.exec_script, sql)
end

--- Begin a transaction now (statements begin one by themselves; this is
-- for an explicit start, as the REPL's `begin()`). No-op inside one.
function Session:begin()
  check_open(self)
  ensure_transaction(self)
end

--- Notices the server sent (NOTICE, WARNING) since the last call.
-- @treturn table list of messages as psql prints them
function Session:notices()
  if not self.conn or self.conn:released() then return {} end
  return self.conn:notices()
end

--- The transaction state: "none" (no transaction open), "idle",
-- "in_transaction", "failed" or "lost".
function Session:transaction_state()
  if self.lost then return "lost" end
  if not self.conn or self.depth == 0 then return "none" end
  return self.conn:transaction_status()
end

--- Commit the open transaction (and everything queued with `add`).
-- @raise caracal.Error when COMMIT fails, including a COMMIT the server
-- turned into ROLLBACK because the transaction had failed
function Session:commit()
  check_open(self)
  if self.flush and #self.pending > 0 then self:flush() end
  if self.depth == 0 then return end
  if self.lost then
    self.depth = 0
    raise { sqlstate = "08006", connection_lost = true, outcome = "rolled_back",
            message = "cannot commit: the connection was lost inside the transaction, " ..
                      "so the server rolled it back" }
  end
  local conn = self.conn
  local ok, rows, count, tag = pcall(conn.exec_script, conn, "COMMIT")
  self.depth = 0
  if not ok then
    local err = rows
    if conn:is_lost() then
      self.lost = true
      -- The COMMIT may have reached the server: nobody knows.
      err.outcome = "unknown"
      err.outcome_message = "the connection was lost during COMMIT: the transaction may or " ..
                            "may not have been committed"
    end
    error(locate(err), 0)
  end
  echo(self, "COMMIT", 0)
  if tag == "ROLLBACK" then
    raise { sqlstate = "25P02", outcome = "rolled_back",
            message = "COMMIT failed: the transaction had an error, so the server rolled it back" }
  end
end

--- Roll back the open transaction; pending `add`s are dropped.
function Session:rollback()
  check_open(self)
  self.pending = {}
  if self.depth == 0 then return end
  self.depth = 0
  if self.lost or not self.conn or self.conn:is_lost() then return end
  control(self, "ROLLBACK")
end

--- Run fn(session) in a transaction: the outermost scope commits on
-- success; a nested one is a savepoint, so only its own work is undone
-- when it fails. On failure the original error value is re-raised.
-- @tparam function fn
-- @return what fn returns
function Session:session_scope(fn)
  check_open(self)
  if self.depth == 0 then
    ensure_transaction(self)
    local res = table.pack(pcall(fn, self))
    if not res[1] then
      pcall(self.rollback, self)
      error(res[2], 0)
    end
    self:commit()
    return table.unpack(res, 2, res.n)
  end
  ensure_transaction(self)
  local depth = self.depth
  local name = "caracal_sp_" .. depth
  control(self, "SAVEPOINT " .. name)
  self.depth = depth + 1
  local res = table.pack(pcall(fn, self))
  self.depth = depth
  if not res[1] then
    -- Undo the inner work only. If the savepoint is gone (the connection
    -- died), report the original error, not a second one.
    if not self.lost then
      pcall(control, self, "ROLLBACK TO SAVEPOINT " .. name)
      pcall(control, self, "RELEASE SAVEPOINT " .. name)
    end
    error(res[2], 0)
  end
  if self.flush and #self.pending > 0 then self:flush() end
  control(self, "RELEASE SAVEPOINT " .. name)
  return table.unpack(res, 2, res.n)
end

--- Roll back what is uncommitted and return the connection. Idempotent.
function Session:close()
  if self.closed then return end
  if self.depth > 0 then pcall(self.rollback, self) end
  self.closed = true
  self.pending = {}
  if self.conn then
    local conn = self.conn
    self.conn = nil
    conn:release()
  end
end

--- `local s <close> = manager:session()`: commit on a clean exit, roll
-- back on an error, then return the connection.
function Session:__close(err)
  if self.closed then return end
  if err == nil then
    local ok, cerr = pcall(self.commit, self)
    self:close()
    if not ok then error(cerr, 0) end
  else
    self:close()
  end
end

Session.__gc = function(self)
  -- No SQL in a finalizer: the connection's own finalizer parks it and
  -- the pool rolls it back at the next checkout.
  self.closed = true
end

function Session:__tostring()
  return string.format("caracal.Session (%s)", self:transaction_state())
end

require("caracal.unitofwork").install(Session)
M.Session = Session

---------------------------------------------------------------------------
-- ConnectionManager
---------------------------------------------------------------------------

--- A configuration and its pool.
-- @type ConnectionManager
local Manager = {}
Manager.__index = Manager
Manager.__name = "caracal.ConnectionManager"

--- A new session (see `Session`). `opts.readonly` begins read-only
-- transactions (the default is the manager's `readonly` field, which
-- `caracal --read-only` sets); they run on a replica when the
-- configuration has `replicas` or `read_url`, unless `opts.replica` is
-- false (for reads that must see the latest commits).
function Manager:session(opts)
  if self.closed then error("the connection manager is closed", 2) end
  return new_session(self, opts)
end

--- Run fn(session) in a transaction on a fresh session; commit on success,
-- roll back and re-raise the original error on failure. `opts.retries`
-- (or `attempts`): retry serialization failures and deadlocks (caracal.retry).
function Manager:session_scope(fn, opts)
  if opts and (opts.retries or opts.attempts) then return require("caracal.retry").session_scope(self, fn, opts) end
  local s = self:session(opts)
  local res = table.pack(pcall(s.session_scope, s, fn))
  s:close()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

--- One statement in its own transaction.
function Manager:execute(sql, ...)
  local args = table.pack(...)
  return self:session_scope(function(s) return s:execute(sql, table.unpack(args, 1, args.n)) end)
end

-- The primary's pool, or with which = "read" the replicas' (nil when none).
local function pool_of(self, which)
  if which == "read" then return self.read_pool end
  return self.pool
end

--- true when a connection can be had and answers; never raises.
-- `which` = "read" checks the replicas' pool instead of the primary's.
function Manager:health_check(which)
  local pool = pool_of(self, which)
  if self.closed or not pool then return false end
  local ok, res = pcall(pool.health_check, pool)
  return ok and res or false
end

--- Pool counters: size, checked_in, checked_out, overflow, total (and
-- connecting, waiting, connects, discards, timeouts, recycles).
-- `overflow` is the number of connections open beyond pool_size now
-- (0..max_overflow), never negative. `which` = "read": the replicas'
-- pool (nil when there is none).
function Manager:get_pool_status(which)
  local pool = pool_of(self, which)
  return pool and pool:status() or nil
end

--- Close the pools (idle connections now, in-use ones when returned).
-- Idempotent.
function Manager:close()
  if self.closed then return end
  self.closed = true
  if self.owns_pool then self.pool:close() end
  if self.read_pool then self.read_pool:close() end
end

function Manager:__tostring()
  return string.format("caracal.ConnectionManager(%s)", self.config and self.config:masked_url() or "shared pool")
end

M.ConnectionManager = Manager

local current

--- Make a connection manager without making it the current one.
-- With no configuration: a pool the embedding host shared
-- (`caracal_Options.pool`) when there is one; else, in order,
-- `CARACAL_DATABASE_URL`, the config file (`$CARACAL_CONFIG` or
-- ./caracal.config.lua), then the local cluster (started when needed).
-- @tparam[opt] DatabaseConfig|table cfg
-- @tparam[opt] table opts `config_file`: an explicit config file
-- @treturn ConnectionManager
function M.create_connection_manager(cfg, opts)
  opts = opts or {}
  if cfg ~= nil then
    cfg = config.DatabaseConfig(cfg)
  elseif core.shared_pool and not opts.config_file then
    cfg = nil -- the host's pool
  else
    cfg = config.resolve(opts.config_file)
    if not cfg then
      local localdb = require "caracal.localdb"
      local info = localdb.start({ quiet = true })
      cfg = config.DatabaseConfig { url = info.url }
    end
  end
  local manager = setmetatable({ config = cfg, closed = false }, Manager)
  if cfg then
    manager.pool = core.Pool(cfg:pool_settings())
    manager.owns_pool = true
    local rcfg = cfg:read_config()
    if rcfg then
      manager.read_config = rcfg
      manager.read_pool = core.Pool(rcfg:pool_settings())
    end
  else
    manager.pool = core.shared_pool
    manager.owns_pool = false
    manager.config = config.DatabaseConfig {}
  end
  manager.pooled = manager.config:transaction_pooler()
  manager.begin_rw, manager.begin_ro = manager.config:begin_sql(false), manager.config:begin_sql(true)
  return manager
end

--- Make the connection manager and make it the current one (the one
-- `get_connection_manager` returns); a previous current one is closed.
-- Arguments as `create_connection_manager`.
-- @treturn ConnectionManager
function M.initialize_connection_manager(cfg, opts)
  local manager = M.create_connection_manager(cfg, opts)
  if current and current ~= manager then current:close() end
  current = manager
  return manager
end

--- The current manager, or nil.
function M.get_connection_manager()
  return current
end

--- Close and forget the current manager.
function M.close_connection_manager()
  if current then current:close() end
  current = nil
end

return M
