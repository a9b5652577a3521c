--- SQL text helpers for migrations: identifier and literal quoting done in
-- Lua (for `--sql` mode, where there is no connection to ask libpq), type
-- validation, and a scanner that finds the leading keywords of each
-- statement in a script while skipping strings, quoted identifiers,
-- dollar-quoted bodies and comments.
-- @module caracal.migrate.sqltext
local M = {}

--- Quote an identifier as PQescapeIdentifier does: wrap in double quotes
-- and double any `"`. Names the server would silently truncate (over 63
-- bytes), empty names, NUL bytes and invalid UTF-8 are refused, so the
-- offline output matches what an online run sends.
-- @tparam string name
-- @treturn string
function M.quote_ident(name)
  if type(name) ~= "string" then
    error("invalid identifier: expected a string, got " .. type(name), 0)
  end
  if name == "" then error("invalid identifier: empty name", 0) end
  if #name > 63 then
    error(string.format("invalid identifier: '%s...' is %d bytes, PostgreSQL allows 63",
      name:sub(1, 40), #name), 0)
  end
  if name:find("\0", 1, true) then error("invalid identifier: contains a NUL byte", 0) end
  if not utf8.len(name) then error("invalid identifier: invalid UTF-8", 0) end
  return '"' .. name:gsub('"', '""') .. '"'
end

--- A SQL literal for a Lua value: strings quoted (E'' form when they hold a
-- backslash, so the result does not depend on standard_conforming_strings),
-- integers and finite floats as numbers, booleans, nil as NULL.
-- @param v
-- @treturn string
function M.literal(v)
  local t = type(v)
  if v == nil then return "NULL" end
  if t == "boolean" then return v and "true" or "false" end
  if math.type(v) == "integer" then return tostring(v) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("cannot write a non-finite number as a SQL literal", 0)
    end
    return string.format("%.17g", v)
  end
  if t ~= "string" then error("cannot write a " .. t .. " as a SQL literal", 0) end
  if v:find("\0", 1, true) then error("a SQL literal cannot contain a NUL byte", 0) end
  if v:find("\\", 1, true) then
    return "E'" .. v:gsub("\\", "\\\\"):gsub("'", "''") .. "'"
  end
  return "'" .. v:gsub("'", "''") .. "'"
end

-- Words that may follow a type's name (multi-word standard types such as
-- `double precision`, `timestamp without time zone`, `interval day to second`).
local TYPE_WORDS = {
  varying = true, precision = true, with = true, without = true, time = true, zone = true,
  to = true, year = true, month = true, day = true, hour = true, minute = true, second = true,
}

--- Check a column type given as SQL text. The grammar is deliberately
-- narrow: a (possibly schema-qualified) type name, then only the keywords
-- of multi-word standard types, `(n)` / `(n,m)` modifiers and `[]`
-- suffixes. No quotes, semicolons, operators or comments can pass, so a
-- type string cannot smuggle SQL.
-- @tparam string t
-- @treturn string the type, trimmed
function M.check_type(t)
  if type(t) ~= "string" then error("invalid column type: expected a string, got " .. type(t), 0) end
  local s = t:match("^%s*(.-)%s*$")
  local function bad(why)
    error(string.format("invalid column type %q: %s", t, why), 0)
  end
  if s == "" then bad("empty") end
  local pos, first, after_array = 1, true, false
  while pos <= #s do
    local word = s:match("^[%a_][%w_]*", pos)
    if word then
      if after_array then bad("nothing may follow []") end
      if first then
        pos = pos + #word
        local qual = s:match("^%.[%a_][%w_]*", pos) -- schema.type
        if qual then pos = pos + #qual end
        first = false
      elseif TYPE_WORDS[word:lower()] then
        pos = pos + #word
      else
        bad("unexpected word '" .. word .. "'")
      end
    elseif s:find("^%s+", pos) then
      pos = s:match("^%s+()", pos)
    elseif s:find("^%(", pos) then
      if first or after_array then bad("misplaced modifier") end
      local mod = s:match("^%(%s*%d+%s*%)", pos) or s:match("^%(%s*%d+%s*,%s*%-?%d+%s*%)", pos)
      if not mod then bad("modifiers must be (n) or (n,m)") end
      pos = pos + #mod
    elseif s:find("^%[", pos) then
      if first then bad("misplaced []") end
      local arr = s:match("^%[%d*%]", pos)
      if not arr then bad("array suffix must be [] or [n]") end
      pos = pos + #arr
      after_array = true
    else
      bad("unexpected character '" .. s:sub(pos, pos) .. "'")
    end
  end
  return s
end

-- Skip a quoted section starting at i (the opening quote); returns the
-- index after the closing quote. A doubled quote stays inside.
local function skip_quoted(sql, i, q, backslashes)
  local j = i + 1
  while j <= #sql do
    local c = sql:sub(j, j)
    if backslashes and c == "\\" then
      j = j + 2
    elseif c == q then
      if sql:sub(j + 1, j + 1) == q then j = j + 2 else return j + 1 end
    else
      j = j + 1
    end
  end
  return j
end

--- Split SQL text into statements and return, for each, its leading words
-- (lowercased, at most `max_words`) and its first line number. Strings,
-- quoted identifiers, dollar-quoted bodies and comments are skipped, so a
-- function body that contains BEGIN ... END is not mistaken for
-- transaction control.
-- @tparam string sql
-- @tparam[opt=6] integer max_words
-- @treturn table list of `{words = {...}, line = n}`
-- @treturn boolean the text ends inside a `--` comment
function M.statements(sql, max_words)
  max_words = max_words or 6
  local out = {}
  local cur
  local line = 1
  local trailing_comment = false
  local i, n = 1, #sql
  local function word(w)
    if not cur then cur = { words = {}, line = line } out[#out + 1] = cur end
    if #cur.words < max_words then cur.words[#cur.words + 1] = w:lower() end
  end
  local function mark()
    if not cur then cur = { words = {}, line = line } out[#out + 1] = cur end
  end
  while i <= n do
    local c = sql:sub(i, i)
    if c == "\n" then
      line = line + 1
      i = i + 1
    elseif c == ";" then
      cur = nil
      i = i + 1
    elseif c == "-" and sql:sub(i + 1, i + 1) == "-" then
      local e = sql:find("\n", i, true)
      if not e then trailing_comment = true end
      i = e or n + 1
    elseif c == "/" and sql:sub(i + 1, i + 1) == "*" then
      local depth, j = 1, i + 2
      while j <= n and depth > 0 do
        local two = sql:sub(j, j + 1)
        if two == "/*" then depth = depth + 1 j = j + 2
        elseif two == "*/" then depth = depth - 1 j = j + 2
        else
          if sql:sub(j, j) == "\n" then line = line + 1 end
          j = j + 1
        end
      end
      i = j
    elseif c == "'" or c == '"' then
      mark()
      local backslashes = c == "'" and i > 1 and sql:sub(i - 1, i - 1):lower() == "e"
      local j = skip_quoted(sql, i, c, backslashes)
      -- A quoted identifier is a word (kept as written, for messages).
      if c == '"' and #cur.words < max_words then cur.words[#cur.words + 1] = sql:sub(i, j - 1) end
      local _, nl = sql:sub(i, j - 1):gsub("\n", "")
      line = line + nl
      i = j
    elseif c == "$" and (sql:find("^%$%$", i) or sql:find("^%$[%a_][%w_]*%$", i)) then
      mark()
      local tag = sql:match("^%$%$", i) or sql:match("^%$[%a_][%w_]*%$", i)
      local e = sql:find(tag, i + #tag, true)
      local j = e and (e + #tag) or (n + 1)
      local _, nl = sql:sub(i, j - 1):gsub("\n", "")
      line = line + nl
      i = j
    elseif c:find("[%a_]") then
      local w = sql:match("^[%a_][%w_$]*", i)
      -- In E'...' the E is scanned as a word; harmless for leading words.
      word(w)
      i = i + #w
    elseif c:find("%s") then
      i = i + 1
    else
      mark()
      i = i + 1
    end
  end
  return out, trailing_comment
end

--- The first transaction-control statement in SQL text, or nil: its
-- words and line. Migrations must not end or open transactions themselves:
-- the runner owns them.
-- @tparam string sql
-- @treturn[1] nil
-- @treturn[2] string the statement's leading words
-- @treturn[2] integer its line within sql
function M.transaction_control(sql)
  for _, st in ipairs(M.statements(sql, 3)) do
    local w1, w2 = st.words[1], st.words[2]
    if w1 == "begin" or w1 == "commit" or w1 == "end" or w1 == "abort"
       or (w1 == "start" and w2 == "transaction")
       or (w1 == "rollback" and w2 ~= "to")
       or (w1 == "prepare" and w2 == "transaction") then
      return table.concat(st.words, " "), st.line
    end
  end
  return nil
end

--- The first statement in SQL text that cannot run inside a transaction
-- block (`CREATE INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, ...), or
-- nil.
-- @tparam string sql
-- @treturn[1] nil
-- @treturn[2] string the statement's leading words
function M.needs_autocommit(sql)
  for _, st in ipairs(M.statements(sql, 8)) do
    local w = st.words
    local s = table.concat(w, " ")
    if (w[1] == "create" or w[1] == "drop" or w[1] == "reindex" or w[1] == "refresh")
       and s:find("%f[%a]concurrently%f[%A]") then
      return s
    end
    if w[1] == "vacuum" or (w[1] == "create" and w[2] == "database")
       or (w[1] == "drop" and w[2] == "database") or (w[1] == "alter" and w[2] == "system") then
      return s
    end
  end
  return nil
end

--- Line and column of a 1-based character position in SQL text, and the
-- text of that line (for psql-style `LINE n:` error context).
-- @tparam string sql
-- @tparam integer pos
-- @treturn integer line
-- @treturn integer column
-- @treturn string the line's text
function M.locate(sql, pos)
  local line, start = 1, 1
  -- The server counts characters, not bytes; step over UTF-8 sequences.
  local chars, i = 0, 1
  while i <= #sql and chars < pos - 1 do
    local c = sql:byte(i)
    if c == 10 then line = line + 1 start = i + 1 end
    local len = c < 0x80 and 1 or c < 0xE0 and 2 or c < 0xF0 and 3 or 4
    i = i + len
    chars = chars + 1
  end
  local stop = sql:find("\n", start, true)
  local text = sql:sub(start, (stop or #sql + 1) - 1)
  return line, (utf8.len(sql:sub(start, i - 1)) or (i - start)) + 1, text
end

return M
