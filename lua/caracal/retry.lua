--- Opt-in retries of transaction scopes that the server rolled back for
-- a reason worth trying again: serialization failures (40001) and
-- deadlocks (40P01), the errors with `err.retryable` set.
--
--    local retry = require "caracal.retry"
--    retry.session_scope(manager, function(session)
--      local n = session:scalar("select count(*) from t where k = $1", k)
--      session:execute("insert into t(k, n) values ($1, $2)", k, n + 1)
--    end, { attempts = 5 })
--    -- or: manager:session_scope(fn, { retries = 4 })
--
-- A scope is retried only when trying again cannot apply anything twice:
--
--  * the error is retryable (40001, 40P01): the server rolled the whole
--    transaction back, so nothing of the attempt remains;
--  * never after a COMMIT whose outcome is unknown (the connection was lost
--    during COMMIT: the transaction may have committed);
--  * never once a statement may have run outside the scope's transaction:
--    the body committed or rolled back through the session (`commit()`,
--    `rollback()`), sent transaction control as SQL (COMMIT, BEGIN, ...), or
--    the connection was found outside a transaction before a statement.
--
-- With `reconnect = true`, a lost connection is retried too, under the
-- same rules (it was lost before COMMIT was sent, so the server rolled the
-- transaction back): for pools without pre-ping, where the first statement
-- after a server restart finds a dead connection.
--
-- The body runs again from the start, so it must not have effects outside
-- the database that cannot be repeated (or must make them idempotent).
-- @module caracal.retry
local core = require "caracal.core"

local M = {}

--- Defaults: 3 attempts; exponential backoff from 20 ms, doubling, at most
-- 1 s, with full jitter (a random fraction of each step).
M.defaults = { attempts = 3, base = 0.02, factor = 2, max_delay = 1.0 }

local sqltext = require "caracal.migrate.sqltext"

-- Does SQL text hold transaction control (BEGIN, COMMIT, ROLLBACK, END,
-- ABORT, START/PREPARE TRANSACTION) outside strings and comments?
local function controls_transaction(sql)
  return sqltext.transaction_control(sql) ~= nil
end

--- How long to wait before attempt `n` (2, 3, ...), in seconds.
-- `backoff` may be a number (a fixed delay), a function `(n) -> seconds`,
-- or nil for the default exponential backoff with jitter.
function M.delay(n, opts)
  local b = opts and opts.backoff
  if type(b) == "number" then return b end
  if type(b) == "function" then return b(n) end
  local base = opts and opts.base or M.defaults.base
  local factor = opts and opts.factor or M.defaults.factor
  local max_delay = opts and opts.max_delay or M.defaults.max_delay
  local d = math.min(max_delay, base * factor ^ (n - 2))
  return d * (0.5 + 0.5 * math.random())
end

local function sleep(seconds)
  if seconds and seconds > 0 then core.sleep(seconds) end
end

--- May the error of an attempt be retried? Returns the reason when not.
-- @param err the error value the attempt raised
-- @tparam table state what the attempt did (`unsafe`: a statement may
-- have run outside the transaction)
-- @tparam table opts `reconnect`
-- @treturn boolean
-- @treturn string why not
function M.retryable(err, state, opts)
  if not core.is_error(err) then return false, "not a database error" end
  if err.outcome == "unknown" then return false, "the COMMIT outcome is unknown" end
  if state and state.unsafe then return false, state.unsafe end
  if err.retryable then return true end
  if opts and opts.reconnect and err.connection_lost then return true end
  return false, "the error is not retryable"
end

-- Give one session instance guards that note anything that could take a
-- statement outside the scope's transaction. Instance fields shadow the
-- class's methods, so db.lua itself is unchanged.
local function guard(session, state)
  local Session = getmetatable(session).__index
  local function check_inside(self)
    if state.in_body and self.depth > 0 and self.conn and not self.conn:released() and not self.lost
       and not self.conn:is_lost() and self.conn:transaction_status() == "idle" then
      state.unsafe = "a statement ran outside the transaction"
    end
  end
  local function wrap_sql(name)
    local orig = Session[name]
    session[name] = function(self, sql, ...)
      if state.in_body and type(sql) == "string" and controls_transaction(sql) then
        state.unsafe = "the body sent transaction control (" .. (sql:match("^%s*(%a+)") or "?") .. ")"
      end
      check_inside(self)
      return orig(self, sql, ...)
    end
  end
  wrap_sql("execute")
  wrap_sql("execute_script")
  for _, name in ipairs({ "commit", "rollback" }) do
    local orig = Session[name]
    session[name] = function(self, ...)
      if state.in_body then state.unsafe = "the body called session:" .. name .. "()" end
      return orig(self, ...)
    end
  end
end

--- Run `fn(session)` in a transaction scope, retrying it when it fails
-- with a retryable error (see the module's rules).
-- @tparam ConnectionManager manager
-- @tparam function fn
-- @tparam[opt] table opts `attempts` (total tries, default 3), `backoff`
-- (seconds, or a function of the attempt number), `base`, `factor`,
-- `max_delay`, `reconnect`, `on_retry` (called with err, attempt number,
-- delay), and the session's options (`readonly`, `holder`)
-- @return what fn returns
-- @raise the last error, with `attempts` (how many were made) set when it
-- is a caracal.Error
function M.session_scope(manager, fn, opts)
  opts = opts or {}
  local attempts = opts.attempts or (opts.retries and opts.retries + 1) or M.defaults.attempts
  if math.type(attempts) ~= "integer" or attempts < 1 then
    error("retry: attempts must be an integer >= 1, got " .. tostring(attempts), 2)
  end
  local n = 0
  while true do
    n = n + 1
    local state = { in_body = false }
    local s = manager:session({ readonly = opts.readonly, holder = opts.holder })
    guard(s, state)
    local res = table.pack(pcall(s.session_scope, s, function(sess)
      state.in_body = true
      local r = table.pack(pcall(fn, sess))
      state.in_body = false
      if not r[1] then error(r[2], 0) end
      return table.unpack(r, 2, r.n)
    end))
    s:close()
    if res[1] then return table.unpack(res, 2, res.n) end
    local err = res[2]
    local ok_retry = M.retryable(err, state, opts)
    if not ok_retry or n >= attempts then
      if core.is_error(err) then err.attempts = n end
      error(err, 0)
    end
    local d = M.delay(n + 1, opts)
    if opts.on_retry then opts.on_retry(err, n, d) end
    sleep(d)
  end
end

return M
