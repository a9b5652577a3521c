--- Printing values for people: result sets as aligned text tables (psql's
-- shape) and Lua values as readable, bounded text. Shared by the REPL and
-- the command line.
--
--    local format = require "caracal.format"
--    print(format.rows(session:execute("select 1 as a, 'x' as b")))
--    --  a | b
--    -- ---+---
--    --  1 | x
--    -- (1 row)
--    print(format.value({ 1, 2, name = "x" }))   --> {1, 2, name = "x"}
--
-- Choices, so the output never surprises: NULL prints as an empty cell
-- (as psql does); numbers and decimals are right-aligned when a whole
-- column holds them; booleans print as Lua's true/false (not psql's
-- t/f: these are Lua values); control characters in cells are escaped (`\n`) so a
-- row stays on one line; long cells are cut with `…`; trailing blanks are
-- never printed. Tables nest to a bounded depth with sorted keys, and
-- anything with a `__tostring` (Decimal, Instant, Error, model objects)
-- prints through it.
-- @module caracal.format
local core = require "caracal.core"

local M = {}

--- Defaults; each function also takes these as `opts` fields.
M.defaults = {
  max_rows = 100,  -- rows shown before the rest is summarised
  max_cell = 80,   -- characters of one cell before it is cut
  depth = 4,       -- nesting shown before `{...}`
  max_items = 50,  -- entries shown per table before `...`
  width = 100,     -- a nested table longer than this is spread over lines
}

local function opt(opts, key)
  if opts and opts[key] ~= nil then return opts[key] end
  return M.defaults[key]
end

-- Display width: characters, not bytes, so UTF-8 text lines up.
local function width(s)
  return utf8.len(s) or #s
end

-- The first n characters of s (UTF-8 aware).
local function cut(s, n)
  if width(s) <= n then return s end
  local stop = utf8.offset(s, n) -- byte where character n starts
  if not stop then return s:sub(1, n - 1) .. "…" end
  return s:sub(1, stop - 1) .. "…"
end

local escapes = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\\"] = "\\\\", ['"'] = '\\"' }

-- A string as a Lua literal, readable: "a\nb" rather than %q's line break.
local function quote(s)
  return '"' .. s:gsub('[%c\\"]', function(c)
    return escapes[c] or string.format("\\%03d", c:byte())
  end) .. '"'
end
M.quote = quote

local function has_tostring(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

--- Is v a result set: an array of row tables with a `columns` list, as
-- `session:execute` returns?
-- @return boolean
function M.is_rows(v)
  return type(v) == "table" and getmetatable(v) == nil and type(rawget(v, "columns")) == "table"
end

local keywords = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
            repeat return then true until while]]):gmatch("%a+") do keywords[w] = true end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil and not keywords[k]
end

-- Sort order for keys of mixed types: numbers, then strings, then the rest.
local type_rank = { number = 1, string = 2, boolean = 3 }
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (type_rank[ta] or 9) < (type_rank[tb] or 9) end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local render -- forward

-- The keys of t in display order: the array part 1..n, then the rest sorted.
local function ordered_keys(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local rest = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then rest[#rest + 1] = k end
  end
  table.sort(rest, key_less)
  return n, rest
end

local function scalar(v, nested)
  local tv = type(v)
  if tv == "string" then return nested and quote(v) or v end
  if v == core.null then return "null" end
  if tv == "number" and math.type(v) == "float" then
    -- Every digit, and a float still looks like one (1.0, not 1).
    local s
    for digits = 15, 17 do
      s = string.format("%." .. digits .. "g", v)
      if tonumber(s) == v then break end
    end
    if s:match("^-?%d+$") then s = s .. ".0" end
    return s
  end
  return tostring(v)
end

-- Render the table t; indent is the current line's indentation.
local function render_table(t, opts, depth, indent, seen)
  if seen[t] then return "<cycle>" end
  if depth >= opt(opts, "depth") then return next(t) == nil and "{}" or "{...}" end
  seen[t] = true
  local n, rest = ordered_keys(t)
  local max_items = opt(opts, "max_items")
  local items, count = {}, 0
  local function add(s)
    count = count + 1
    if count <= max_items then items[#items + 1] = s end
  end
  local inner = indent .. "  "
  for i = 1, n do add(render(t[i], opts, depth + 1, inner, seen)) end
  for _, k in ipairs(rest) do
    local key = is_identifier(k) and k or "[" .. render(k, opts, depth + 1, inner, seen) .. "]"
    add(key .. " = " .. render(t[k], opts, depth + 1, inner, seen))
  end
  seen[t] = nil
  if count > max_items then items[#items + 1] = string.format("... (%d more)", count - max_items) end
  if #items == 0 then return "{}" end
  local line = "{" .. table.concat(items, ", ") .. "}"
  if #indent + width(line) <= opt(opts, "width") and not line:find("\n", 1, true) then return line end
  return "{\n" .. inner .. table.concat(items, ",\n" .. inner) .. ",\n" .. indent .. "}"
end

function render(v, opts, depth, indent, seen)
  if type(v) == "table" and not has_tostring(v) then
    return render_table(v, opts, depth, indent, seen)
  end
  return scalar(v, depth > 0)
end

--- One Lua value as text. Strings print as they are at the top level and
-- quoted inside tables; tables show sorted keys, nest to `opts.depth`,
-- stop after `opts.max_items` entries, mark cycles, and spread over lines
-- when longer than `opts.width`.
-- @param v any value
-- @tparam[opt] table opts overrides of `format.defaults`
-- @treturn string
function M.value(v, opts)
  return render(v, opts, 0, "", {})
end

-- A cell's text: one line, bounded.
local function cell(v, opts)
  local s
  if v == nil or v == core.null then
    s = ""
  elseif type(v) == "string" then
    s = v
  elseif type(v) == "table" and not has_tostring(v) then
    -- JSON values come back as tables: show them as the JSON they were.
    local ok, json = pcall(core.json_encode, v)
    s = ok and json or M.value(v, { width = math.huge, depth = 2 })
  else
    s = scalar(v, false)
  end
  s = s:gsub("[%c\\]", function(c)
    if c == "\\" then return c end
    return escapes[c] or string.format("\\%03d", c:byte())
  end)
  return cut(s, opt(opts, "max_cell"))
end
M.cell = cell

local function numeric(v)
  return type(v) == "number" or core.is_decimal(v)
end

local function rtrim(s)
  return (s:gsub("%s+$", ""))
end

local function count_line(n)
  return string.format("(%d row%s)", n, n == 1 and "" or "s")
end

--- A result set as an aligned text table, psql's layout: a centred
-- header, a `---+---` rule, the rows, then `(N rows)`. Beyond
-- `opts.max_rows` rows, a line says how many more there are.
-- `opts.footer = false` leaves out the `(N rows)` line (`\d` uses that).
-- @tparam table rows as `session:execute` returns them
-- @tparam[opt] table opts overrides of `format.defaults`, and `footer`
-- @treturn string the lines, without a final newline
function M.rows(rows, opts)
  local columns = rows.columns or {}
  local total = #rows
  local shown = math.min(total, math.max(0, math.floor(opt(opts, "max_rows"))))
  local lines = {}
  if #columns == 0 then
    lines[1] = "--"
  else
    local widths, right, cells = {}, {}, {}
    for c, name in ipairs(columns) do
      widths[c] = width(name)
      right[c] = true
      local any = false
      for r = 1, total do
        local v = rows[r][name]
        if v ~= nil and v ~= core.null then
          any = true
          if not numeric(v) then right[c] = false end
        end
      end
      if not any then right[c] = false end
    end
    for r = 1, shown do
      local row = {}
      for c, name in ipairs(columns) do
        local s = cell(rows[r][name], opts)
        row[c] = s
        if width(s) > widths[c] then widths[c] = width(s) end
      end
      cells[r] = row
    end
    local head, rule = {}, {}
    for c, name in ipairs(columns) do
      local pad = widths[c] - width(name)
      local left = pad // 2
      head[c] = " " .. string.rep(" ", left) .. name .. string.rep(" ", pad - left) .. " "
      rule[c] = string.rep("-", widths[c] + 2)
    end
    lines[1] = rtrim(table.concat(head, "|"))
    lines[2] = table.concat(rule, "+")
    for r = 1, shown do
      local parts = {}
      for c, s in ipairs(cells[r]) do
        local pad = string.rep(" ", widths[c] - width(s))
        parts[c] = right[c] and (" " .. pad .. s .. " ") or (" " .. s .. pad .. " ")
      end
      lines[#lines + 1] = rtrim(table.concat(parts, "|"))
    end
  end
  if shown < total then
    lines[#lines + 1] = string.format("... %d more row%s (showing %d; set repl.max_rows or CARACAL_REPL_MAX_ROWS)",
      total - shown, total - shown == 1 and "" or "s", shown)
  end
  if not (opts and opts.footer == false) then lines[#lines + 1] = count_line(total) end
  return table.concat(lines, "\n")
end

--- Several values as the REPL prints a line's results: tab-separated like
-- lua.c, except that a result set is printed as its own table block.
-- @tparam table values the values, `values.n` of them
-- @tparam[opt] table opts overrides of `format.defaults`
-- @treturn string
function M.results(values, opts)
  local parts, block = {}, false
  for i = 1, values.n or #values do
    local v = values[i]
    if M.is_rows(v) then
      parts[i] = M.rows(v, opts)
      block = true
    else
      parts[i] = M.value(v, opts)
    end
  end
  return table.concat(parts, block and "\n" or "\t")
end

return M
