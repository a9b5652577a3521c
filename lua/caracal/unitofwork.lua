--- The session's unit of work for model objects: `add`, `flush`, `get`,
-- `query`, `update`, `delete`. Loaded by `caracal.db`, it adds these
-- methods to `Session`.
--
--    manager:session_scope(function(s)
--      local p = Principal{name = "a", principal_type = "agent", owner = "o"}
--      s:add(p)
--      s:add(LedgerEvent{agent_id = p.principal_id, resource_type = "x", quantity = "1", cost = "0.03"})
--    end)  -- flushed in order and committed; event_id is set on the event
--
-- Objects are validated when added and again when written if changed
-- since, so a bad object never reaches the server and a failed flush
-- writes nothing the scope keeps. Ledger models (LedgerEvent, AuthorityLedgerEvent, AuditLog)
-- are append-only: `update` and `delete` refuse them.
-- @module caracal.unitofwork
local core = require "caracal.core"
local models = require "caracal.models"
local schema = require "caracal.schema"

local M = {}

-- Statement texts are built once per table and cached: the connection's
-- prepared-statement cache keys on the text. With each, the options of
-- conn:execute_pipeline that read the parameters from the objects' fields
-- and store the returned row back into them.
local insert_sql, select_pk_sql = {}, {}

local function q(name) return '"' .. name:gsub('"', '""') .. '"' end

local function insert_statement(tbl)
  local sql = insert_sql[tbl.name]
  if sql then return sql, tbl.insert_cols, tbl.insert_opts end
  local cols, marks, keys, into = {}, {}, {}, {}
  for _, c in ipairs(tbl.columns) do
    if not c.serial then
      cols[#cols + 1] = c
      marks[#marks + 1] = "$" .. #cols
      keys[#keys + 1] = c.attr
    end
    into[c.name] = c.attr
  end
  local names = {}
  for i, c in ipairs(cols) do names[i] = q(c.name) end
  sql = string.format("INSERT INTO %s (%s) VALUES (%s) RETURNING *", q(tbl.name),
                      table.concat(names, ", "), table.concat(marks, ", "))
  insert_sql[tbl.name], tbl.insert_cols, tbl.insert_opts = sql, cols, { keys = keys, into = into }
  return sql, cols, tbl.insert_opts
end

local function need_table(v, what)
  local tbl = models.table_of(v)
  if not tbl then
    error(string.format("bad argument #1 to '%s' (model object expected, got %s)", what,
                        type(v) == "table" and "a table" or type(v)), 3)
  end
  return tbl
end

local function need_model(model, what)
  if type(model) == "string" then
    local tbl = schema.by_model[model]
    if tbl then return tbl end
  end
  local tbl = models.table_of(model)
  if not tbl then error(string.format("bad argument #1 to '%s' (model expected)", what), 3) end
  return tbl
end

--- Queue an object for writing at the next flush or commit.
-- @param obj a model object
-- @return obj
function M.add(self, obj)
  models.ensure_valid(need_table(obj, "add"), obj)
  self.pending[#self.pending + 1] = obj
  return obj
end

--- Queue several objects, in order.
function M.add_all(self, list)
  for _, obj in ipairs(list) do M.add(self, obj) end
  return list
end

-- Set what the server returned (generated keys, normalised values) on obj.
local function apply_row(tbl, obj, row)
  for _, c in ipairs(tbl.columns) do
    local v = row[c.name]
    if c.json == "array" and type(v) == "table" then v = core.json_array(v) end
    rawset(obj, c.attr, v)
  end
end

-- A statement error located at the user's line, the session marked lost
-- when the connection went away (what db.lua's statements do).
local function statement_error(self, conn, err)
  if conn:is_lost() then self.lost = true end
  if core.is_error(err) then
    local where = require("caracal.db").user_where(3)
    if where then err.where = where end
  end
  error(err, 0)
end

-- Write validated objects on the session's connection, in order. A run of
-- consecutive objects of one model is one INSERT ... RETURNING * sent as
-- a pipeline (conn:execute_pipeline): one round trip for the run instead
-- of one per object, the same prepared statement; the parameters are read
-- from the objects' fields and each returned row is stored back into its
-- object, both in C.
local function write(self, pending)
  local conn = self:connection()
  local n = #pending
  local i = 1
  while i <= n do
    local tbl = models.table_of(pending[i])
    local j = i
    while j < n and models.table_of(pending[j + 1]) == tbl do j = j + 1 end
    local sql, cols, opts = insert_statement(tbl)
    if j == i then
      local obj = pending[i]
      local ncols = #cols
      local args = {}
      for k = 1, ncols do args[k] = rawget(obj, cols[k].attr) end
      local ok, rows = pcall(conn.execute, conn, sql, table.unpack(args, 1, ncols))
      if not ok then statement_error(self, conn, rows) end
      apply_row(tbl, obj, rows[1])
    else
      local group = table.move(pending, i, j, 1, {})
      -- Rows are stored into the objects as they come back; if a later
      -- one fails, the objects are put back as they were.
      local saved = {}
      for k, obj in ipairs(group) do
        local copy = {}
        for attr, v in next, obj do copy[attr] = v end
        saved[k] = copy
      end
      local ok, err = pcall(conn.execute_pipeline, conn, sql, group, opts)
      if not ok then
        for k, obj in ipairs(group) do
          local copy = saved[k]
          for _, c in ipairs(tbl.columns) do rawset(obj, c.attr, copy[c.attr]) end
        end
        statement_error(self, conn, err)
      end
    end
    i = j + 1
  end
end

M.write = write -- for caracal.bulk (bulk_insert with returning = true)

--[[ How a flush keeps "a failed flush writes nothing":

  * In a transaction (depth >= 1), an explicit `flush()` and the one before
    a statement (`execute` flushes first) run inside a savepoint: on
    failure only the flush is undone and the transaction stays usable.
  * The flush that `commit` makes at the outermost level skips the
    savepoint (two round trips fewer per commit). Nothing is lost by it:
    if a statement of the flush fails, the server aborts the whole
    transaction, so the COMMIT cannot keep part of it (a later `commit`
    raises 25P02; a scope or `<close>` rolls back); if the failure is
    raised before anything was sent (validation), the transaction is
    untouched; and a batch interrupted half-way by a Lua error is aborted
    on the server by execute_pipeline itself.
  * With no transaction open, one object is a single INSERT in its own
    implicit transaction (one round trip; atomic by itself); several are
    written in a transaction of their own (BEGIN ... COMMIT), as before.
    A read-only session always takes that path, so BEGIN READ ONLY applies.

  Whatever failed, the queue is left as it was. ]]
local function flush(self, in_commit)
  local pending = self.pending
  if #pending == 0 then return end
  for _, obj in ipairs(pending) do
    models.ensure_valid(models.table_of(obj), obj)
  end
  self.pending = {}
  local ok, err
  if self.depth == 0 and #pending == 1 and not self.readonly and not self.lost then
    ok, err = pcall(write, self, pending)
  elseif self.depth == 1 and in_commit then
    ok, err = pcall(write, self, pending)
  else
    ok, err = pcall(self.session_scope, self, function(s) write(s, pending) end)
  end
  if not ok then
    self.pending = pending
    error(err, 0)
  end
end

--- Write every queued object, in order. Keys the server generates
-- (`event_id`, `log_id`) and its normalised values (NUMERIC scale, ...)
-- are set on the objects. On failure nothing of the flush is kept (it runs
-- inside a savepoint when a transaction is open) and the queue is left as
-- it was.
function M.flush(self)
  flush(self, false)
end

--- The object with this primary key, or nil.
-- @param model a model class (or its name)
-- @param pk the primary key value
function M.get(self, model, pk)
  local tbl = need_model(model, "get")
  local sql = select_pk_sql[tbl.name]
  if not sql then
    sql = string.format("SELECT * FROM %s WHERE %s = $1", q(tbl.name), q(tbl.primary_key.name))
    select_pk_sql[tbl.name] = sql
  end
  local row = self:first(sql, pk)
  return row and models.from_row(tbl, row) or nil
end

local OPS = { ["="] = "=", ["=="] = "=", ["!="] = "<>", ["<>"] = "<>", ["<"] = "<", ["<="] = "<=",
              [">"] = ">", [">="] = ">=", like = "LIKE", ilike = "ILIKE" }

--- Objects of a model matching filters.
-- @param model a model class (or its name)
-- @tparam[opt] table filters `{field = value}` for equality,
-- `{field = {">=", value}}` for another operator (= != < <= > >= like
-- ilike in), `{field = caracal.null}` for IS NULL
-- @tparam[opt] table opts `order_by` ("field" or "field desc", or a list),
-- `limit`, `offset`
-- @treturn table list of objects
function M.query(self, model, filters, opts)
  local tbl = need_model(model, "query")
  opts = opts or {}
  local where, args = {}, {}
  local keys = {}
  for k in pairs(filters or {}) do keys[#keys + 1] = k end
  table.sort(keys) -- one statement text per filter shape
  for _, attr in ipairs(keys) do
    local col = tbl.by_attr[attr]
    if not col then error(string.format("%s has no field '%s'", tbl.model, tostring(attr)), 2) end
    local v = filters[attr]
    local op = "="
    if type(v) == "table" and not getmetatable(v) and type(v[1]) == "string" and v[2] ~= nil then
      op, v = v[1], v[2]
    end
    if v == core.null then
      where[#where + 1] = q(col.name) .. " IS NULL"
    elseif op == "in" then
      args[#args + 1] = v
      where[#where + 1] = string.format("%s = ANY($%d)", q(col.name), #args)
    else
      local sqlop = OPS[op]
      if not sqlop then error(string.format("unknown operator '%s' for %s.%s", tostring(op), tbl.model, attr), 2) end
      args[#args + 1] = v
      where[#where + 1] = string.format("%s %s $%d", q(col.name), sqlop, #args)
    end
  end
  local sql = "SELECT * FROM " .. q(tbl.name)
  if #where > 0 then sql = sql .. " WHERE " .. table.concat(where, " AND ") end
  local order = opts.order_by
  if order then
    if type(order) == "string" then order = { order } end
    local parts = {}
    for i, o in ipairs(order) do
      local attr, dir = o:match("^%s*([%w_]+)%s*(%a*)%s*$")
      local col = attr and tbl.by_attr[attr]
      dir = (dir or ""):lower()
      if not col or (dir ~= "" and dir ~= "asc" and dir ~= "desc") then
        error(string.format("bad order_by '%s' for %s", tostring(o), tbl.model), 2)
      end
      parts[i] = q(col.name) .. (dir ~= "" and (" " .. dir:upper()) or "")
    end
    sql = sql .. " ORDER BY " .. table.concat(parts, ", ")
  end
  if opts.limit then
    args[#args + 1] = math.tointeger(opts.limit) or error("limit must be an integer", 2)
    sql = sql .. " LIMIT $" .. #args
  end
  if opts.offset then
    args[#args + 1] = math.tointeger(opts.offset) or error("offset must be an integer", 2)
    sql = sql .. " OFFSET $" .. #args
  end
  local rows = self:execute(sql, table.unpack(args, 1, #args))
  local out = {}
  for i, row in ipairs(rows) do out[i] = models.from_row(tbl, row) end
  return out
end

local function refuse_ledger(tbl, what)
  if tbl.append_only then
    error(core.Error { kind = "append_only", model = tbl.model,
      message = string.format("%s is append-only: ledger rows cannot be %s", tbl.model, what) }, 3)
  end
end

--- Change fields of a stored object (not for ledger models).
-- @param obj a model object already stored
-- @tparam table changes `{field = value}`
function M.update(self, obj, changes)
  local tbl = need_table(obj, "update")
  refuse_ledger(tbl, "updated")
  local candidate = {}
  for k, v in pairs(obj) do candidate[k] = v end
  for k, v in pairs(changes) do candidate[k] = v end
  models.validate(tbl, candidate)
  local sets, args = {}, {}
  local keys = {}
  for k in pairs(changes) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, attr in ipairs(keys) do
    local col = tbl.by_attr[attr]
    if col.primary_key then error(tbl.model .. ": the primary key cannot be changed", 2) end
    args[#args + 1] = candidate[attr]
    sets[#sets + 1] = string.format("%s = $%d", q(col.name), #args)
  end
  if #sets == 0 then return obj end
  args[#args + 1] = rawget(obj, tbl.primary_key.attr)
  local sql = string.format("UPDATE %s SET %s WHERE %s = $%d RETURNING *", q(tbl.name),
                            table.concat(sets, ", "), q(tbl.primary_key.name), #args)
  local row = self:first(sql, table.unpack(args, 1, #args))
  if not row then error(tbl.model .. ": no stored row with this primary key", 2) end
  for _, c in ipairs(tbl.columns) do rawset(obj, c.attr, row[c.name]) end
  return obj
end

--- Delete a stored object (not for ledger models).
function M.delete(self, obj)
  local tbl = need_table(obj, "delete")
  refuse_ledger(tbl, "deleted")
  local sql = string.format("DELETE FROM %s WHERE %s = $1", q(tbl.name), q(tbl.primary_key.name))
  local _, count = self:execute(sql, rawget(obj, tbl.primary_key.attr))
  return count
end

--- Install the methods on a Session class. `commit` is wrapped so that its
-- flush skips the savepoint (see `flush` above).
function M.install(Session)
  for _, name in ipairs({ "add", "add_all", "flush", "get", "query", "update", "delete" }) do
    Session[name] = M[name]
  end
  local commit = Session.commit
  function Session.commit(self)
    if not self.closed and #self.pending > 0 then flush(self, true) end
    return commit(self)
  end
  require("caracal.bulk").install(Session)
end

return M
