--- The administration REPL: `caracal` with no script, on a terminal.
--
-- A Lua prompt with the database in scope. It follows lua.c's rules: a
-- line is first tried as `return <line>` so an expression prints its
-- value, `=expr` works, and input that ends too early (a syntax error at
-- `<eof>`) continues on a `>> ` prompt. Results print as lua.c prints
-- them (tab-separated) except that result sets print as psql-style
-- tables (`caracal.format`).
--
-- Globals at the prompt: `db` (the connection manager), `session` (the
-- REPL's own session; both made at first use), `caracal`, `repl` (this
-- module: `repl.max_rows`), and the helpers `sql`, `describe`, `tables`,
-- `explain`, `begin`, `commit`, `rollback`, `models`. Backslash
-- commands: `\d [name]`, `\dt`, `\timing`, `\refresh`, `\?`, `\q`.
--
-- Transactions: outside `begin()`, each input line is one transaction,
-- committed when the line succeeds and rolled back when it raises (so
-- `for ... do sql("insert ...") end` is all or nothing). After `begin()`
-- the transaction stays open until `commit()` or `rollback()`.
--
-- The prompt (psql's `=#`, `*#`, `!#` in Lua's `>` shape):
--
--    caracal>              not connected yet (nothing is started before the first use)
--    caracal@mydb>         connected, no transaction open
--    caracal@mydb*>        inside a transaction
--    caracal@mydb!>        the transaction failed: rollback() to go on
--    caracal@mydb?>        the connection was lost
--    caracal@mydb(ro)>     read-only mode (`opts.read_only`: BEGIN READ ONLY)
--
-- Ctrl-C abandons the line being typed, cancels a running statement on
-- the server (it fails with 57014 and the session lives on), or interrupts
-- running Lua code ("interrupted!"). Ctrl-D or `\q` leaves (exit 0),
-- rolling back an open transaction first. History is kept in
-- `$CARACAL_HISTORY` or `~/.caracal_history` (1000 lines).
-- @module caracal.repl
local core = require "caracal.core"
local dbmod = require "caracal.db"
local format = require "caracal.format"

local M = {}

--- Rows shown per result set before the rest is summarised
-- (`CARACAL_REPL_MAX_ROWS`, or set `repl.max_rows` at the prompt).
M.max_rows = tonumber(os.getenv("CARACAL_REPL_MAX_ROWS") or "") or 100

--- Lines kept in the history file.
M.history_size = 1000

M.help = [[
Lua with the database in scope. An expression prints its value; a result
set prints as a table.

  sql(query, ...)      run a statement on the REPL session ($1.. parameters), print and return the rows
  describe(name)       columns, indexes and constraints of a table (also \d name)
  tables()             the tables (also \dt; \d lists every relation)
  explain(query, ...)  the plan of a statement (explain("analyze select ...") runs it)
  begin() commit() rollback()
                       an explicit transaction; without one, each line is its own transaction
  models()             the declared models, when caracal.models is available
  db, session, caracal the connection manager, the REPL session, the API

  \d [NAME]   describe NAME, or list relations      \timing [on|off]  time each line
  \dt         list tables                           \refresh          reload completion names
  \?          this help                             \q                quit (also Ctrl-D)

Prompt: caracal@DB> no transaction, *> in a transaction, !> failed, (ro) read-only.
Ctrl-C clears the line, cancels a running statement, or interrupts Lua code.
Tab completes globals, fields after . and :, and table and column names inside strings.
]]

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
            repeat return then true until while]]):gmatch("%a+") do KEYWORDS[#KEYWORDS + 1] = w end

-- The name the expression form of a line passes its values through.
local RESULTS = "__caracal_repl_results"
local function identity(...) return ... end

local MARKS = { none = "", idle = "", active = "*", in_transaction = "*", failed = "!",
                lost = "?", unknown = "?" }

local function out(...)
  io.stdout:write(...)
end

-- Errors and notices go to stderr, after what stdout already holds.
local function err_out(...)
  io.stdout:flush()
  io.stderr:write(...)
  io.stderr:flush()
end

-- A command tag that changed the catalog (completion names go stale).
local function is_ddl(tag)
  return type(tag) == "string" and (tag:match("^CREATE") or tag:match("^ALTER") or
    tag:match("^DROP") or tag == "IMPORT FOREIGN SCHEMA") ~= nil
end

-- Keep the frames of the user's code, not the REPL's own.
-- level 1 is this function, 2 the message handler, 3 what raised.
local function short_traceback(msg)
  local tb = debug.traceback(msg, 3)
  local lines = {}
  local in_stack = false
  for line in tb:gmatch("[^\n]+") do
    if line == "stack traceback:" then in_stack = true end
    if in_stack and line:find("caracal.host.interruptible", 1, true) then break end
    -- The REPL's own frames (the helpers) say nothing to the user.
    if not (in_stack and (line:find("caracal/repl%.lua") or line:find("^%s*%[C%]: in %?$"))) then
      lines[#lines + 1] = line
    end
    if in_stack and line:find("in main chunk", 1, true) then break end
    if #lines >= 14 then
      lines[#lines + 1] = "\t..."
      break
    end
  end
  if lines[#lines] == "stack traceback:" then lines[#lines] = nil end
  return table.concat(lines, "\n")
end

-- Message handler for code typed at the prompt: structured errors stay as
-- they are (their __tostring prints well), others get a short traceback.
local function msghandler(err)
  if core.is_error(err) then return err end
  if type(err) ~= "string" then
    local mt = getmetatable(err)
    if type(mt) == "table" and mt.__tostring then return tostring(err) end
    err = string.format("(error object is a %s value)", type(err))
  end
  local tb = short_traceback(err) -- not a tail call: the levels above count on this frame
  return tb
end

-- Is the end of this text inside a string literal? Lua's quotes, escapes,
-- long brackets and comments, on the one line being completed.
local function open_string(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c == "-" and s:sub(i + 1, i + 1) == "-" then
      local eq = s:match("^%-%-%[(=*)%[", i)
      if not eq then return false end -- a line comment to the end
      local close = s:find("]" .. eq .. "]", i, true)
      if not close then return false end
      i = close + #eq + 2
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = s:sub(j, j)
        if d == "\\" then j = j + 2
        elseif d == c then break
        else j = j + 1 end
      end
      if j > n then return true end
      i = j + 1
    elseif c == "[" and s:match("^%[=*%[", i) then
      local eq = s:match("^%[(=*)%[", i)
      local close = s:find("]" .. eq .. "]", i, true)
      if not close then return true end
      i = close + #eq + 2
    else
      i = i + 1
    end
  end
  return false
end
M.open_string = open_string

-- v[k] without running any __index function (completion must not start
-- a database or run user code): raw fields, then __index tables.
local function peek(v, k)
  for _ = 1, 10 do
    if type(v) == "table" then
      local x = rawget(v, k)
      if x ~= nil then return x end
    end
    local mt = getmetatable(v)
    local idx = type(mt) == "table" and rawget(mt, "__index") or nil
    if type(idx) ~= "table" then return nil end
    v = idx
  end
  return nil
end

-- The identifier keys reachable from v by `.` or `:` (same rule as peek).
local function field_names(v)
  local names, seen = {}, {}
  for _ = 1, 10 do
    if type(v) == "table" then
      for k in next, v do
        if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] then
          seen[k] = true
          names[#names + 1] = k
        end
      end
    end
    local mt = getmetatable(v)
    local idx = type(mt) == "table" and rawget(mt, "__index") or nil
    if type(idx) ~= "table" then break end
    v = idx
  end
  return names
end

local function starts(s, prefix)
  return s:sub(1, #prefix) == prefix
end

---------------------------------------------------------------------------
-- The REPL object
---------------------------------------------------------------------------

local Repl = {}
Repl.__index = Repl

--- A REPL (no terminal work yet). `host` is `caracal.host` (readline,
-- signals); `opts` are the command line's: `url`, `config`, `read_only`,
-- or `manager` (an existing connection manager).
-- @tparam table opts
-- @tparam table host
-- @return the REPL object
function M.new(opts, host)
  local self = setmetatable({
    opts = opts or {}, host = host,
    manager_ = opts and opts.manager or nil, session_ = nil, dbname = nil,
    explicit = false,  -- begin() was called: lines do not commit by themselves
    timing = false,
    catalog = nil,     -- completion names, loaded at the first need
    shown = setmetatable({}, { __mode = "k" }), -- result sets already printed this line
    last_history = nil, quitting = false,
  }, Repl)
  self.env = self:make_env()
  return self
end

--- The connection manager (`db`), made at first use from the command
-- line's options.
function Repl:manager()
  if not self.manager_ then self.manager_ = require("caracal.cli").manager(self.opts) end
  return self.manager_
end

local function pcall_query(fn, ...) return pcall(fn, ...) end

--- The REPL's session (`session`), connected at first use. Its
-- statements print their notices, can be cancelled with Ctrl-C, and mark
-- the completion names stale after DDL.
function Repl:session()
  local s = self.session_
  if s and s.closed then s, self.session_ = nil, nil end
  if s then return s end
  local manager = self:manager()
  s = manager:session { readonly = self.opts.read_only or false, holder = "caracal repl" }
  -- Connect now, not at the first statement: the host must hold the
  -- connection's cancel key before any statement runs (Ctrl-C). The
  -- session keeps this connection until it is closed.
  local conn = s:connection()
  if self.host and self.host.set_cancel then self.host.set_cancel(conn) end
  self.dbname = conn:database()
  local repl, query = self, self.host and self.host.query or pcall_query
  local function wrap(method, after)
    return function(session, ...)
      local res = table.pack(query(method, session, ...))
      repl:print_notices(session)
      if not res[1] then error(res[2], 0) end
      after(res)
      return table.unpack(res, 2, res.n)
    end
  end
  -- Per-instance methods: first/scalar and everything else that goes
  -- through self:execute is covered too.
  s.execute = wrap(dbmod.Session.execute, function(res)
    if is_ddl(res[4]) then repl.catalog = nil end
  end)
  s.execute_script = wrap(dbmod.Session.execute_script, function() repl.catalog = nil end)
  self.session_ = s
  return s
end

function Repl:print_notices(s)
  local ok, notices = pcall(s.notices, s)
  if ok then
    for _, n in ipairs(notices) do err_out(n, "\n") end
  end
end

function Repl:print_error(err)
  err_out(tostring(err), "\n")
end

--- The prompt for the current state (see the module comment).
-- @treturn string
function Repl:prompt()
  local ro = self.opts.read_only and "(ro)" or ""
  local s = self.session_
  if not s or s.closed then return "caracal" .. ro .. "> " end
  return string.format("caracal@%s%s%s> ", self.dbname or "?", ro, MARKS[s:transaction_state()] or "?")
end

-- The globals of the prompt: `db` and `session` are looked up each time
-- (a lost session is replaced), everything else falls through to _G.
function Repl:make_env()
  local repl = self
  -- Not a tail call, so that this frame is there for the error levels
  -- (3: the caller at the prompt) and for tracebacks.
  local function helper(method, ...)
    local fixed = table.pack(...)
    return function(...)
      local res
      if fixed.n > 0 then res = table.pack(method(repl, table.unpack(fixed, 1, fixed.n)))
      else res = table.pack(method(repl, ...)) end
      return table.unpack(res, 1, res.n)
    end
  end
  local env = {
    caracal = rawget(_G, "caracal") or require("caracal"),
    repl = M,
    sql = helper(Repl.sql),
    describe = helper(Repl.describe),
    tables = helper(Repl.tables, false),
    explain = helper(Repl.explain),
    begin = helper(Repl.begin),
    commit = helper(Repl.commit),
    rollback = helper(Repl.rollback),
    models = helper(Repl.models),
  }
  return setmetatable(env, {
    __index = function(_, k)
      if k == "db" then return repl:manager() end
      if k == "session" then return repl:session() end
      return _G[k]
    end,
  })
end

---------------------------------------------------------------------------
-- Helpers available at the prompt
---------------------------------------------------------------------------

-- Print a statement's outcome: a table for rows, the tag for a command.
function Repl:show(rows, tag)
  if #rows == 0 and #(rows.columns or {}) == 0 and tag and tag ~= "" then
    out(tag, "\n")
  else
    out(format.rows(rows, { max_rows = M.max_rows }), "\n")
  end
  self.shown[rows] = true
end

--- `sql(query, ...)`: run one statement on the REPL session, print the
-- result (a table, or the command tag such as `INSERT 0 1`) and return
-- the rows. Parameters are `$1..$n`, sent separately.
-- @tparam string query
-- @return rows
function Repl:sql(query, ...)
  if type(query) ~= "string" then
    error("bad argument #1 to 'sql' (string expected, got " .. type(query) .. ")", 3)
  end
  local rows, _, tag = self:session():execute(query, ...)
  self:show(rows, tag)
  return rows
end

local RELKIND = { r = "Table", p = "Partitioned table", v = "View", m = "Materialized view",
                  f = "Foreign table", S = "Sequence", i = "Index", I = "Partitioned index",
                  c = "Composite type" }

--- `describe(name)` and `\d name`: a relation's columns (type, nullable,
-- default), then its indexes, check and foreign-key constraints and the
-- foreign keys that reference it, as psql's `\d` shows them.
-- @tparam string name a table name, optionally schema-qualified
function Repl:describe(name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'describe' (string expected, got " .. type(name) .. ")", 3)
  end
  local s = self:session()
  local rel = s:first([[
    select n.nspname::text as schema, c.relname::text as name, c.relkind::text as kind
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = to_regclass($1)]], name)
  if not rel then
    err_out(string.format('Did not find any relation named "%s".\n', name))
    return
  end
  out(string.format('%s "%s.%s"\n', RELKIND[rel.kind] or "Relation", rel.schema, rel.name))
  local cols = s:execute([[
    select a.attname::text as "Column", format_type(a.atttypid, a.atttypmod) as "Type",
           case when a.attnotnull then 'not null' else '' end as "Nullable",
           coalesce(pg_get_expr(d.adbin, d.adrelid), '') as "Default"
    from pg_attribute a
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped
    order by a.attnum]], name)
  out(format.rows(cols, { max_rows = math.huge, footer = false }), "\n")
  local indexes = s:execute([[
    select c.relname::text as name, i.indisprimary as is_primary, i.indisunique as is_unique,
           pg_get_indexdef(i.indexrelid) as def
    from pg_index i join pg_class c on c.oid = i.indexrelid
    where i.indrelid = to_regclass($1)
    order by i.indisprimary desc, i.indisunique desc, c.relname]], name)
  if #indexes > 0 then
    out("Indexes:\n")
    for _, ix in ipairs(indexes) do
      local kind = ix.is_primary and "PRIMARY KEY, " or ix.is_unique and "UNIQUE, " or ""
      out(string.format('    "%s" %s%s\n', ix.name, kind, ix.def:match(" USING (.*)$") or ix.def))
    end
  end
  local cons = s:execute([[
    select conname::text as name, contype::text as type, pg_get_constraintdef(oid) as def
    from pg_constraint
    where conrelid = to_regclass($1) and contype in ('c', 'f')
    order by contype, conname]], name)
  for _, section in ipairs { { "c", "Check constraints:" }, { "f", "Foreign-key constraints:" } } do
    local header = false
    for _, c in ipairs(cons) do
      if c.type == section[1] then
        if not header then out(section[2], "\n") header = true end
        out(string.format('    "%s" %s\n', c.name, c.def))
      end
    end
  end
  local refs = s:execute([[
    select conrelid::regclass::text as source, conname::text as name,
           pg_get_constraintdef(oid) as def
    from pg_constraint
    where confrelid = to_regclass($1) and contype = 'f'
    order by 1, 2]], name)
  if #refs > 0 then
    out("Referenced by:\n")
    for _, r in ipairs(refs) do
      out(string.format('    TABLE "%s" CONSTRAINT "%s" %s\n', r.source, r.name, r.def))
    end
  end
end

--- `tables()` and `\dt` (tables), `\d` (every relation): print the
-- user's relations and return them.
-- @tparam boolean all every kind of relation, not only tables
-- @return rows with Schema, Name, Type, Owner
function Repl:tables(all)
  local kinds = all and "'r', 'p', 'v', 'm', 'f', 'S'" or "'r', 'p'"
  local rows = self:session():execute(string.format([[
    select n.nspname::text as "Schema", c.relname::text as "Name",
           case c.relkind when 'r' then 'table' when 'p' then 'partitioned table'
             when 'v' then 'view' when 'm' then 'materialized view'
             when 'f' then 'foreign table' when 'S' then 'sequence' end as "Type",
           pg_get_userbyid(c.relowner)::text as "Owner"
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind in (%s) and n.nspname not in ('pg_catalog', 'information_schema')
      and n.nspname !~ '^pg_toast'
    order by 1, 2]], kinds))
  if #rows == 0 then
    out("Did not find any relations.\n")
    self.shown[rows] = true
  else
    out("List of relations\n")
    self:show(rows)
  end
  return rows
end

--- `explain(query, ...)`: print the plan of a statement, one line per
-- plan line. `explain("analyze select ...")` runs it (EXPLAIN ANALYZE).
function Repl:explain(query, ...)
  if type(query) ~= "string" then
    error("bad argument #1 to 'explain' (string expected, got " .. type(query) .. ")", 3)
  end
  local rows = self:session():execute("EXPLAIN " .. query, ...)
  local column = rows.columns[1]
  for _, r in ipairs(rows) do out(tostring(r[column]), "\n") end
end

--- `begin()`: open a transaction that stays open across lines until
-- `commit()` or `rollback()` (BEGIN READ ONLY in read-only mode).
function Repl:begin()
  local s = self:session()
  self.explicit = true
  if s:transaction_state() ~= "none" then
    err_out("WARNING:  there is already a transaction in progress\n")
    return
  end
  if s.begin then
    s:begin()
  else
    -- The session begins its transaction with its first statement; an
    -- empty script is a statement that does nothing else.
    dbmod.Session.execute_script(s, "")
  end
  out("BEGIN\n")
end

-- End the explicit transaction with the session's method ("commit" or
-- "rollback"), echoing the word psql prints.
local function end_transaction(self, method, word)
  local s = self.session_
  self.explicit = false
  if not s or s.closed or s:transaction_state() == "none" then
    err_out("WARNING:  there is no transaction in progress\n")
    return
  end
  s[method](s)
  out(word, "\n")
end

--- `commit()`: commit the open transaction. A transaction that had
-- failed is rolled back by the server and reported as an error (25P02).
function Repl:commit() end_transaction(self, "commit", "COMMIT") end

--- `rollback()`: roll back the open transaction.
function Repl:rollback() end_transaction(self, "rollback", "ROLLBACK") end

--- `models()`: the declared models and their tables, when
-- `caracal.models` is available; otherwise says so.
function Repl:models()
  local ok, models = pcall(require, "caracal.models")
  if not ok or type(models) ~= "table" or type(models.names) ~= "function" then
    out("Models are not available: caracal.models is not installed.\n")
    return
  end
  local sok, schema = pcall(require, "caracal.schema")
  local rows = { columns = { "Model", "Table" } }
  for i, name in ipairs(models.names()) do
    local decl = sok and type(schema) == "table" and schema.by_model and schema.by_model[name]
    rows[i] = { Model = name, Table = decl and decl.name or nil }
  end
  self:show(rows)
  return rows
end

---------------------------------------------------------------------------
-- Completion
---------------------------------------------------------------------------

-- Table and column names of the live catalog, loaded once and again after
-- DDL or \refresh. Runs on the REPL session (it sees the open
-- transaction's own DDL); never inside a failed transaction.
function Repl:load_catalog()
  local s = self:session()
  local state = s:transaction_state()
  if state == "failed" or state == "lost" then return nil end
  local ok, tables, columns = pcall(function()
    local execute = dbmod.Session.execute -- no notices or cancel while typing
    return execute(s, [[
      select distinct table_name::text as name from information_schema.tables
      where table_schema not in ('pg_catalog', 'information_schema') order by 1]]),
      execute(s, [[
      select distinct column_name::text as name from information_schema.columns
      where table_schema not in ('pg_catalog', 'information_schema') order by 1]])
  end)
  if state == "none" then
    if ok then pcall(s.commit, s) else pcall(s.rollback, s) end
  end
  if not ok then return nil end
  local catalog = { tables = {}, columns = {} }
  for i, r in ipairs(tables) do catalog.tables[i] = r.name end
  for i, r in ipairs(columns) do catalog.columns[i] = r.name end
  self.catalog = catalog
  return catalog
end

function Repl:complete_sql(text)
  local catalog = self.catalog or self:load_catalog()
  if not catalog then return {} end
  local qual, word = text:match("^(.*%.)([%w_]*)$")
  if not qual then qual, word = "", text end
  if not word:match("^[%w_]*$") then return {} end
  local low, seen, words = word:lower(), {}, {}
  for _, list in ipairs { catalog.tables, catalog.columns } do
    for _, name in ipairs(list) do
      if starts(name:lower(), low) and not seen[name] then
        seen[name] = true
        words[#words + 1] = qual .. name
      end
    end
  end
  return words
end

-- What a global name stands for during completion, without making the
-- manager or the session: before they exist, their classes do.
function Repl:root(name)
  local v = rawget(self.env, name)
  if v ~= nil then return v end
  if name == "db" then return self.manager_ or dbmod.ConnectionManager end
  if name == "session" then return self.session_ or dbmod.Session end
  return rawget(_G, name)
end

function Repl:complete_lua(text)
  local words, seen = {}, {}
  local function add(w)
    if not seen[w] then
      seen[w] = true
      words[#words + 1] = w
    end
  end
  local prefix, sep, partial = text:match("^([%a_][%w_%.]*)([%.:])([%w_]*)$")
  if prefix then
    if prefix:find("%.%.") or prefix:find("%.$") then return {} end
    local v, first = nil, true
    for name in prefix:gmatch("[^%.]+") do
      if first then v, first = self:root(name), false else v = peek(v, name) end
      if v == nil then return {} end
    end
    for _, k in ipairs(field_names(v)) do
      if starts(k, partial) and (sep == "." or type(peek(v, k)) == "function") then
        add(prefix .. sep .. k)
      end
    end
  elseif text:match("^[%a_]?[%w_]*$") then
    for _, t in ipairs { self.env, { db = true, session = true }, _G } do
      for k in next, t do
        if type(k) == "string" and starts(k, text) and k:match("^[%a_][%w_]*$") then add(k) end
      end
    end
    for _, k in ipairs(KEYWORDS) do if starts(k, text) then add(k) end end
  end
  table.sort(words)
  return words
end

--- Completion candidates for readline: table and column names inside a
-- string literal, else globals, keywords, and fields or methods after
-- `.` or `:`.
-- @tparam string text the word being completed
-- @tparam string line the whole line
-- @tparam integer start where text starts in line (0-based)
-- @treturn table the candidates (whole words replacing text)
-- @treturn string the character to add after a unique match
function Repl:complete(text, line, start)
  if open_string(line:sub(1, start)) then return self:complete_sql(text), " " end
  return self:complete_lua(text), ""
end

---------------------------------------------------------------------------
-- Reading and running
---------------------------------------------------------------------------

function Repl:remember(line)
  if line:match("^%s*$") or line == self.last_history then return end
  self.last_history = line
  self.host.history_add(line)
end

-- Read one unit of input: a backslash command, a compiled chunk, a syntax
-- error, nil at the end of input, or false after Ctrl-C.
function Repl:read_chunk()
  local line = self.host.readline(self:prompt())
  if not line then return line end
  self:remember(line)
  if line:match("^%s*\\") then return { command = line } end
  local expr = line:sub(1, 1) == "=" and line:sub(2) or line -- Lua 5.1's =expr
  -- lua.c tries "return <line>" first. Here the values go through a
  -- function argument instead, so a call in the line is not a tail call
  -- and the line's own frame (stdin:1) stays on the stack, where errors
  -- find it; the newline keeps a trailing comment from eating the ")".
  local fn = load("local " .. RESULTS .. " = ... return " .. RESULTS .. "(" .. expr .. "\n)",
                  "=stdin", "t", self.env)
  if fn then return { fn = fn } end
  if expr ~= line then line = "return " .. expr end
  local buffer = line
  while true do
    local chunk, err = load(buffer, "=stdin", "t", self.env)
    if chunk then return { fn = chunk } end
    if not err:find("<eof>$") then return { error = err } end
    local more = self.host.readline(">> ")
    if more == nil then return { error = err } end
    if more == false then return false end
    self:remember(more)
    buffer = buffer .. "\n" .. more
  end
end

function Repl:command(line)
  local cmd, arg = line:match("^%s*\\(%S+)%s*(.-)%s*$")
  if cmd == "q" then
    self.quitting = true
  elseif cmd == "?" then
    out(M.help)
  elseif cmd == "d" then
    if arg == "" then self:tables(true) else self:describe(arg) end
  elseif cmd == "dt" then
    self:tables(false)
  elseif cmd == "timing" then
    if arg == "on" then self.timing = true
    elseif arg == "off" then self.timing = false
    else self.timing = not self.timing end
    out("Timing is ", self.timing and "on" or "off", ".\n")
  elseif cmd == "refresh" then
    self.catalog = nil
    local catalog = self:load_catalog()
    if catalog then
      out(string.format("Completion names reloaded: %d tables, %d columns.\n",
                        #catalog.tables, #catalog.columns))
    else
      err_out("Completion names not reloaded: the transaction has failed.\n")
    end
  else
    err_out(string.format("invalid command \\%s\nTry \\? for help.\n", cmd or ""))
  end
end

-- Outside begin(), a line is a transaction: commit it when the line
-- succeeded, roll it back when it raised.
function Repl:end_of_line(ok)
  local s = self.session_
  if not s or s.closed then return end
  local state = s:transaction_state()
  if state == "none" then
    self.explicit = false
    return
  end
  if self.explicit or state == "lost" then return end
  if ok then
    local cok, err = pcall(s.commit, s)
    if not cok then self:print_error(err) end
  else
    pcall(s.rollback, s)
  end
  self:print_notices(s)
end

function Repl:interruptible(fn, ...)
  return self.host.interruptible(msghandler, fn, ...)
end

-- Run one unit of input and print what it gives.
function Repl:eval(chunk)
  local started = self.host.now()
  local ok
  if chunk.error then
    self:print_error(chunk.error)
    return
  end
  local res
  if chunk.command then
    res = table.pack(self:interruptible(self.command, self, chunk.command))
  else
    res = table.pack(self:interruptible(chunk.fn, identity))
  end
  ok = res[1]
  if ok then
    local values = { n = 0 }
    for i = 2, res.n do
      local v = res[i]
      if not (type(v) == "table" and self.shown[v]) then
        values.n = values.n + 1
        values[values.n] = v
      end
    end
    if values.n > 0 then
      local pok, err = self:interruptible(function()
        out(format.results(values, { max_rows = M.max_rows }), "\n")
      end)
      if not pok then self:print_error(err) end
    end
  else
    self:print_error(res[2])
  end
  self:end_of_line(ok)
  self.shown = setmetatable({}, { __mode = "k" })
  local toggled = chunk.command and chunk.command:match("^%s*\\timing")
  if self.timing and not toggled then
    out(string.format("Time: %.3f ms\n", (self.host.now() - started) * 1000))
  end
end

-- A session whose connection died is replaced at its next use.
function Repl:check_session()
  local s = self.session_
  if s and not s.closed and s:transaction_state() == "lost" then
    err_out("The connection to the server was lost; the next statement opens a new session.\n")
    pcall(s.close, s)
    self.session_ = nil
    self.explicit = false
    if self.host.set_cancel then self.host.set_cancel(nil) end
  end
end

-- Leave: roll back what is open, give the connection back, save history.
function Repl:finish()
  local s = self.session_
  if s and not s.closed then
    local state = s:transaction_state()
    if state ~= "none" and state ~= "lost" then
      out("Rolling back the open transaction.\n")
      local ok, err = pcall(s.rollback, s)
      if not ok then self:print_error(err) end
    end
    pcall(s.close, s)
  end
  self.session_ = nil
  io.stdout:flush()
  self.host.history_save()
  self.host.close()
  return 0
end

--- Read, run and print until Ctrl-D or `\q`.
-- @treturn integer the exit code (0)
function Repl:loop()
  while true do
    self:check_session()
    local chunk = self:read_chunk()
    if chunk == nil then
      return self:finish()
    end
    if chunk then
      local ok, err = xpcall(self.eval, debug.traceback, self, chunk)
      if not ok then err_out("caracal: internal error in the REPL: ", tostring(err), "\n") end
      if self.quitting then return self:finish() end
    end
  end
end

--- Start the REPL on the terminal: history, completion, banner, loop.
-- @tparam table opts the command line's options (`url`, `config`,
-- `read_only`)
-- @tparam[opt] table host `caracal.host` (the default)
-- @treturn integer the exit code
function M.run(opts, host)
  host = host or require("caracal.host")
  local repl = M.new(opts, host)
  local path = os.getenv("CARACAL_HISTORY")
  if not path or path == "" then
    local home = os.getenv("HOME")
    path = home and home ~= "" and (home .. "/.caracal_history") or nil
  end
  if path then host.history_load(path, M.history_size) end
  host.set_completer(function(text, line, start) return repl:complete(text, line, start) end)
  out(string.format("caracal %s (%s). \\? for help, Ctrl-D to quit.\n", core.version, _VERSION))
  return repl:loop()
end

return M
