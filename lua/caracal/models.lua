--- Typed model constructors for every Caracal table.
--
--    local models = require "caracal.models"
--    local p = models.Principal{name = "my-agent", principal_type = "agent", owner = "user@example.com"}
--    local e = models.LedgerEvent{agent_id = p.principal_id, resource_type = "api.openai.gpt4",
--                                 quantity = "1000", cost = caracal.Decimal("0.03")}
--
-- A constructor fills the client-side defaults (UUIDs, `created_at` and
-- `timestamp` now, `revoked=false`, `currency="USD"` ...) and rejects bad
-- input before any round trip: unknown fields, wrong types, missing
-- required fields, strings over their VARCHAR length, values outside an
-- enumeration, decimals that do not fit NUMERIC(20,6), floats where an
-- exact decimal is needed. Each error is a `caracal.Error` with
-- `kind = "validation"` and `model`, `field`, `value` fields, and a
-- message that names the model, field, value and expectation.
--
-- Everything is read from `caracal.schema`, the one declaration.
-- @module caracal.models
local core = require "caracal.core"
local schema = require "caracal.schema"

local M = {}

local INT32_MIN, INT32_MAX = -2147483648, 2147483647

-- A short, safe rendering of a rejected value for messages.
local function show(v)
  if type(v) == "string" then
    if #v > 60 then return string.format("%q...", v:sub(1, 60)) end
    return string.format("%q", v)
  end
  if type(v) == "table" and not getmetatable(v) then return "a table" end
  return tostring(v)
end

local function reject(tbl, col, value, fmt, ...)
  local field = col and col.attr or nil
  local where = field and (tbl.model .. "." .. field) or tbl.model
  local msg = where .. ": " .. string.format(fmt, ...)
  error(core.Error { message = msg, kind = "validation", model = tbl.model, field = field,
                     value = (col and col.secret) and "***" or value }, 0)
end

local function check_string(tbl, col, v)
  if type(v) ~= "string" then
    reject(tbl, col, v, "expected a string, got %s", type(v) == "table" and "a table" or type(v))
  end
  if v:find("\0", 1, true) then reject(tbl, col, v, "a string cannot contain a NUL byte") end
  local n = utf8.len(v)
  if not n then reject(tbl, col, v, "the string is not valid UTF-8") end
  return n
end

-- Convert and check one value against its column; returns the stored form.
local function coerce(tbl, col, v)
  local t = col.type
  if t == "uuid" then
    if type(v) ~= "string" or not core.is_uuid(v) then
      reject(tbl, col, v, "expected a UUID, got %s", show(v))
    end
    return core.uuid(v)
  elseif t == "varchar" then
    local n = check_string(tbl, col, v)
    if col.length and n > col.length then
      reject(tbl, col, col.secret and "***" or v, "expected at most %d characters, got %d", col.length, n)
    end
    if col.values then
      local ok = false
      for _, allowed in ipairs(col.values) do if v == allowed then ok = true break end end
      if not ok then
        reject(tbl, col, v, "expected one of %s, got %s", table.concat(col.values, ", "), show(v))
      end
    end
    if col.pattern and not v:match(col.pattern) then
      reject(tbl, col, v, "expected %s, got %s", col.pattern_text, show(v))
    end
    return v
  elseif t == "integer" or t == "bigint" then
    if math.type(v) ~= "integer" then
      reject(tbl, col, v, "expected an integer, got %s", math.type(v) == "float" and ("the float " .. tostring(v)) or show(v))
    end
    if t == "integer" and (v < INT32_MIN or v > INT32_MAX) then
      reject(tbl, col, v, "expected an integer between %d and %d, got %d", INT32_MIN, INT32_MAX, v)
    end
    if col.min and v < col.min then reject(tbl, col, v, "expected an integer >= %d, got %d", col.min, v) end
    return v
  elseif t == "boolean" then
    if type(v) ~= "boolean" then reject(tbl, col, v, "expected true or false, got %s", show(v)) end
    return v
  elseif t == "numeric" then
    if math.type(v) == "float" then
      reject(tbl, col, v, "got the float %s, which is not exact; pass a string (\"%s\") or a Decimal",
             tostring(v), tostring(v))
    end
    local ok, d = pcall(core.Decimal, v)
    if not ok then reject(tbl, col, v, "expected a decimal, got %s", show(v)) end
    local fits, why = d:fits(col.precision, col.scale)
    if not fits then reject(tbl, col, v, "%s %s", tostring(d), why) end
    return d
  elseif t == "timestamp" then
    if core.is_instant(v) then return v end
    if type(v) == "string" or math.type(v) == "integer" then
      local ok, inst = pcall(core.Instant, v)
      if ok then return inst end
    end
    reject(tbl, col, v, "expected an Instant, an ISO 8601 string or Unix seconds, got %s", show(v))
  elseif t == "jsonb" then
    if col.json == "array" then
      if type(v) ~= "table" then reject(tbl, col, v, "expected an array of strings, got %s", show(v)) end
      local n = #v
      for k in pairs(v) do
        if math.type(k) ~= "integer" or k < 1 or k > n then
          reject(tbl, col, v, "expected an array of strings, got a table with key %s", show(k))
        end
      end
      local out = core.json_array()
      for i = 1, n do
        if type(v[i]) ~= "string" then
          reject(tbl, col, v, "expected an array of strings, element %d is %s", i, show(v[i]))
        end
        check_string(tbl, col, v[i])
        out[i] = v[i]
      end
      return out
    end
    if type(v) ~= "table" and v ~= core.null then
      reject(tbl, col, v, "expected a table (JSON object), got %s", show(v))
    end
    local ok, err = pcall(core.json_encode, v)
    if not ok then reject(tbl, col, v, "%s", tostring(err):gsub("^.-: ", "")) end
    return v
  end
  error("caracal.models: unknown column type " .. tostring(t))
end

local function suggest(tbl, key)
  local best, bestd
  for _, c in ipairs(tbl.columns) do
    local a, b = key, c.attr
    -- cheap similarity: common prefix or substring
    local d = (b:find(a, 1, true) or a:find(b, 1, true)) and 0 or nil
    if not d then
      local i = 0
      while i < #a and i < #b and a:sub(i + 1, i + 1) == b:sub(i + 1, i + 1) do i = i + 1 end
      d = i >= 3 and 1 or nil
    end
    if d and (not bestd or d < bestd) then best, bestd = c.attr, d end
  end
  return best and string.format(" (did you mean '%s'?)", best) or ""
end

-- The fields of each object as it was last validated, so that `add` and
-- `flush` validate again only when a field was set, added or removed
-- since (a validation costs more than the rest of a queued insert). A
-- JSON table changed in place is not seen here; it is still encoded, and
-- refused if it cannot be, when the object is sent.
local validated = setmetatable({}, { __mode = "k" })
local COUNT = {} -- the key of a snapshot's field count

local function remember(obj)
  local snap, n = {}, 0
  for k, v in next, obj do
    snap[k] = v
    n = n + 1
  end
  snap[COUNT] = n
  validated[obj] = snap
end

local function unchanged(obj)
  local snap = validated[obj]
  if not snap then return false end
  local n = 0
  for k, v in next, obj do
    if snap[k] ~= v then return false end
    n = n + 1
  end
  return n == snap[COUNT]
end

--- Validate a complete object against its table (used at construction
-- and again before it is written, in case fields changed since).
-- @raise caracal.Error (kind "validation")
function M.validate(tbl, obj)
  for k in pairs(obj) do
    if type(k) ~= "string" or not tbl.by_attr[k] then
      reject(tbl, nil, k, "unknown field %s%s", type(k) == "string" and ("'" .. k .. "'") or show(k),
             type(k) == "string" and suggest(tbl, k) or "")
    end
  end
  for _, col in ipairs(tbl.columns) do
    local v = rawget(obj, col.attr)
    if v == nil then
      if not col.nullable and not col.serial then reject(tbl, col, nil, "is required") end
    else
      rawset(obj, col.attr, coerce(tbl, col, v))
    end
  end
  remember(obj)
  return obj
end

--- Validate obj unless it is unchanged since it was last validated.
function M.ensure_valid(tbl, obj)
  if not unchanged(obj) then M.validate(tbl, obj) end
  return obj
end

-- Display: LedgerEvent<42 agent_id=... cost=0.030000 currency=USD>
local function object_tostring(obj)
  local tbl = getmetatable(obj).__table
  local parts = {}
  local pk = tbl.primary_key
  local id = rawget(obj, pk.attr)
  parts[1] = id ~= nil and tostring(id) or "new"
  for _, attr in ipairs(tbl.show) do
    local v = rawget(obj, attr)
    if v ~= nil then parts[#parts + 1] = attr .. "=" .. tostring(v) end
  end
  return tbl.model .. "<" .. table.concat(parts, " ") .. ">"
end

local classes = {}

--- Build an object of a model from a database row (column names).
function M.from_row(tbl, row)
  local obj = {}
  for _, col in ipairs(tbl.columns) do
    local v = row[col.name]
    if v ~= nil then
      if col.json == "array" and type(v) == "table" then v = core.json_array(v) end
      obj[col.attr] = v
    end
  end
  return setmetatable(obj, classes[tbl.model])
end

--- Plain table of an object's fields (attribute names), for JSON or printing.
function M.to_table(obj)
  local out = {}
  for k, v in pairs(obj) do out[k] = v end
  return out
end

-- One class per model: calling it constructs and validates.
for _, tbl in ipairs(schema.tables) do
  local class = {
    __table = tbl, __name = "caracal." .. tbl.model, __tostring = object_tostring,
    __index = { to_table = M.to_table },
  }
  setmetatable(class, {
    __call = function(_, fields)
      if type(fields) ~= "table" then
        error(core.Error { message = tbl.model .. ": expected a table of fields, got " .. type(fields),
                           kind = "validation", model = tbl.model }, 2)
      end
      local obj = {}
      for k, v in pairs(fields) do obj[k] = v end
      for _, col in ipairs(tbl.columns) do
        if obj[col.attr] == nil and col.default ~= nil then
          local d = col.default
          if type(d) == "function" then d = d() end
          obj[col.attr] = d
        end
      end
      M.validate(tbl, obj)
      return setmetatable(obj, class)
    end,
    __tostring = function() return "model " .. tbl.model .. " (" .. tbl.name .. ")" end,
  })
  classes[tbl.model] = class
  M[tbl.model] = class
end

--- The declaration behind an object or a model class; nil otherwise.
function M.table_of(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__table") then return mt.__table end
  if type(v) == "table" and rawget(v, "__table") then return v.__table end
  return nil
end

--- Model names, in dependency order.
function M.names()
  local out = {}
  for i, t in ipairs(schema.tables) do out[i] = t.model end
  return out
end

return M
