--- Bulk inserts for imports: `session:bulk_insert` and `session:copy_writer`.
-- Loaded by `caracal.unitofwork`, which adds them to `Session`.
--
--    local n = session:bulk_insert(LedgerEvent, rows)          -- COPY, returns the count
--    local objs = session:bulk_insert(LedgerEvent, rows, { returning = true })
--
--    local w <close> = session:copy_writer(LedgerEvent)        -- streaming
--    for row in source do w:write(row) end
--    w:close()                                                 -- the rest; returns the count
--
-- Every row goes through the model's constructor first (its client-side
-- defaults and its validation, exact types included), so a bad row is
-- reported with the constructor's message, plus `row = i`, before
-- anything is sent. The rows are then written with COPY ... FROM STDIN
-- (`conn:copy_in`): values converted in C exactly as statement parameters
-- are (Decimals, Instants, JSON) and streamed in chunks. COPY returns no
-- generated keys; `returning = true` writes with the pipelined INSERT ...
-- RETURNING * of `flush` instead and returns the objects, keys set.
--
-- Like any statement, a bulk insert runs in the session's transaction
-- (begun if none is open): a server error during the COPY (a foreign key,
-- a CHECK) fails the statement, nothing of it is written, and the
-- transaction must be rolled back (a scope does it).
-- @module caracal.bulk
local core = require "caracal.core"
local models = require "caracal.models"
local schema = require "caracal.schema"

local M = {}

-- Type OIDs params.c needs to know (JSON is encoded, floats are refused
-- for NUMERIC); other columns are sent as text of unknown type.
local OID = { numeric = 1700, jsonb = 3802 }

local function q(name) return '"' .. name:gsub('"', '""') .. '"' end

-- The COPY statement, keys and types of a table, built once.
local plans = {}
local function copy_plan(tbl)
  local plan = plans[tbl.name]
  if plan then return plan end
  local names, keys, types = {}, {}, {}
  for _, c in ipairs(tbl.columns) do
    if not c.serial then
      names[#names + 1] = q(c.name)
      keys[#keys + 1] = c.attr
      types[#types + 1] = OID[c.type] or 0
    end
  end
  plan = {
    sql = string.format("COPY %s (%s) FROM STDIN", q(tbl.name), table.concat(names, ", ")),
    opts = { keys = keys, types = types },
  }
  plans[tbl.name] = plan
  return plan
end

local function need_model(model, what)
  local tbl
  if type(model) == "string" then tbl = schema.by_model[model] end
  tbl = tbl or models.table_of(model)
  if not tbl then error(string.format("bad argument #1 to '%s' (model expected)", what), 3) end
  return tbl
end

-- The constructor's object for a row (a table of fields, or an object of
-- the model); a rejected row raises the constructor's error with `row`.
local function construct(class, tbl, row, i)
  if type(row) ~= "table" then
    error(core.Error { kind = "validation", model = tbl.model, row = i,
                       message = string.format("%s: row %d: expected a table of fields, got %s",
                                               tbl.model, i, type(row)) }, 0)
  end
  local ok, obj = pcall(class, row)
  if not ok then
    if core.is_error(obj) then obj.row = i end
    error(obj, 0)
  end
  return obj
end

-- A statement error located at the user's line (the session marked lost
-- when the connection went away), raised.
local function raise_located(self, conn, err, level)
  if conn:is_lost() then self.lost = true end
  if core.is_error(err) then
    local where = require("caracal.db").user_where(level + 1)
    if where then err.where = where end
  end
  error(err, 0)
end

local function control(self, conn, sql)
  if self.manager.config.echo then io.stderr:write("[caracal] " .. sql .. "\n") end
  local ok, err = pcall(conn.exec_script, conn, sql)
  if not ok then raise_located(self, conn, err, 3) end
end

-- COPY the rows (a list of validated objects, or a function giving the
-- next list) on the session's connection, in its transaction.
local function copy(self, tbl, source, count)
  self:begin()
  local conn = self.conn
  local plan = copy_plan(tbl)
  if self.manager.config.echo then
    io.stderr:write(string.format("[caracal] %s  -- %d rows\n", plan.sql, count))
  end
  local ok, n = pcall(conn.copy_in, conn, plan.sql, source, plan.opts)
  if not ok then return false, n end
  return true, n
end

-- Rows are validated in batches of this many; past the first, a batch is
-- validated while the server stores the one before.
local BATCH = 1000

--- Insert many rows of one model at once.
-- @param model a model class (or its name)
-- @tparam table rows a list of tables of fields (or objects of the model)
-- @tparam[opt] table opts `returning`: write with INSERT ... RETURNING and
-- return the objects with their generated keys (slower than COPY)
-- @treturn integer|table the number of rows written, or the objects
-- @raise caracal.Error (kind "validation", `row` = the index) for a bad
-- row, before anything is sent; a server error from the COPY
function M.bulk_insert(self, model, rows, opts)
  local tbl = need_model(model, "bulk_insert")
  if type(rows) ~= "table" then
    error("bad argument #2 to 'bulk_insert' (table expected, got " .. type(rows) .. ")", 2)
  end
  opts = opts or {}
  local class = models[tbl.model]
  local n = #rows
  if opts.returning then
    local objs = {}
    for i = 1, n do objs[i] = construct(class, tbl, rows[i], i) end
    if #self.pending > 0 then self:flush() end -- what was queued first goes first
    if n > 0 then
      self:begin()
      require("caracal.unitofwork").write(self, objs)
    end
    return objs
  end
  -- The first batch is validated before anything is sent; the next ones
  -- while the server stores the previous one (two cores do the work of
  -- one). A bad row in a later batch ends the COPY and the savepoint
  -- taken for that case undoes it: either way the error is the
  -- constructor's, nothing is written and the transaction is as before.
  local first = {}
  for i = 1, math.min(n, BATCH) do first[i] = construct(class, tbl, rows[i], i) end
  if #self.pending > 0 then self:flush() end
  if n == 0 then return 0 end
  local done = 0
  local function source()
    if done == 0 then
      done = #first
      return first
    end
    if done >= n then return nil end
    local upto = math.min(done + BATCH, n)
    local batch = {}
    for i = done + 1, upto do batch[i - done] = construct(class, tbl, rows[i], i) end
    done = upto
    return batch
  end
  local savepoint = n > BATCH
  self:begin()
  local conn = self.conn
  if savepoint then control(self, conn, "SAVEPOINT caracal_bulk") end
  local ok, res = copy(self, tbl, source, n)
  if ok then
    if savepoint then control(self, conn, "RELEASE SAVEPOINT caracal_bulk") end
    return res
  end
  if savepoint and core.is_error(res) and res.kind == "validation" and not conn:is_lost() then
    pcall(conn.exec_script, conn, "ROLLBACK TO SAVEPOINT caracal_bulk")
    pcall(conn.exec_script, conn, "RELEASE SAVEPOINT caracal_bulk")
  end
  raise_located(self, conn, res, 2)
end

---------------------------------------------------------------------------
-- Streaming: rows are validated as they are written and sent as one COPY
-- per `batch` rows, so memory stays bounded and no COPY is ever left open
-- while other code runs on the session.
---------------------------------------------------------------------------

local Writer = {}
Writer.__index = Writer
local writer_serial = 0 -- commit sends open writers in the order they were made
Writer.__name = "caracal.CopyWriter"

--- Validate a row (the model's constructor) and queue it; a full batch
-- is sent. A bad row raises (with `row`, its number in this writer) and
-- is not queued: the writer stays usable.
-- @tparam table row fields (or an object of the model)
function Writer:write(row)
  if self.closed then error("attempt to use a closed copy writer", 2) end
  local i = self.seen + 1
  local obj = construct(self.class, self.tbl, row, i)
  self.seen = i
  local buf = self.buf
  buf[#buf + 1] = obj
  if #buf >= self.batch then self:send() end
end

--- Send the queued rows now (one COPY).
function Writer:send()
  local buf = self.buf
  if #buf == 0 then return end
  self.buf = {}
  local session = self.session
  if #session.pending > 0 then session:flush() end
  local ok, n = copy(session, self.tbl, buf, #buf)
  if not ok then raise_located(session, session.conn, n, 2) end
  self.count = self.count + n
end

--- Send the rest and close the writer. Idempotent.
-- @treturn integer rows written by this writer
function Writer:close()
  if not self.closed then
    self:send()
    self.closed = true
    self.session.copy_writers[self] = nil
  end
  return self.count
end

--- Drop the queued rows and close the writer (rows already sent stay
-- in the transaction).
function Writer:discard()
  self.buf = {}
  self.closed = true
  self.session.copy_writers[self] = nil
end

-- `<close>`: the rest is sent on a clean exit, dropped on an error.
function Writer:__close(err)
  if err == nil then self:close() else self:discard() end
end

function Writer:__tostring()
  return string.format("caracal.CopyWriter(%s, %d written, %d queued%s)", self.tbl.model, self.count,
                       #self.buf, self.closed and ", closed" or "")
end

--- A streaming writer for one model (see `Writer`). `commit` sends what
-- open writers hold; `rollback` drops it.
-- @param model a model class (or its name)
-- @tparam[opt] table opts `batch`: rows per COPY (default 10000)
function M.copy_writer(self, model, opts)
  local tbl = need_model(model, "copy_writer")
  opts = opts or {}
  local batch = opts.batch or 10000
  if math.type(batch) ~= "integer" or batch < 1 then
    error("copy_writer: batch must be an integer >= 1", 2)
  end
  writer_serial = writer_serial + 1
  local w = setmetatable({ session = self, tbl = tbl, class = models[tbl.model], batch = batch,
                           buf = {}, seen = 0, count = 0, closed = false, serial = writer_serial }, Writer)
  local writers = rawget(self, "copy_writers")
  if not writers then
    writers = {}
    rawset(self, "copy_writers", writers)
  end
  writers[w] = true
  return w
end

--- Install on a Session class: the two methods, and commit/rollback
-- handling of open writers (called by caracal.unitofwork).
function M.install(Session)
  Session.bulk_insert = M.bulk_insert
  Session.copy_writer = M.copy_writer
  local commit, rollback = Session.commit, Session.rollback
  function Session.commit(self)
    local writers = rawget(self, "copy_writers")
    if writers and next(writers) and not self.closed then
      local list = {}
      for w in pairs(writers) do list[#list + 1] = w end
      table.sort(list, function(a, b) return a.serial < b.serial end)
      for _, w in ipairs(list) do w:send() end
    end
    return commit(self)
  end
  function Session.rollback(self)
    local writers = rawget(self, "copy_writers")
    if writers then for w in pairs(writers) do w.buf = {} end end
    return rollback(self)
  end
end

return M
