--- Migration scripts: finding, loading and validating them, their
-- checksums, the revision chain, and resolving targets (`head`, `base`,
-- an id or unique prefix, `+N`, `-N`).
--
-- A script is `migrations/NNNN_<revision>_<slug>.lua` and returns
--
--    return {
--      revision = "c0a1b2c3d4e5", down_revision = nil, message = "v0.5 baseline",
--      up = function(op) ... end, down = function(op) ... end,
--      -- optional: transaction = false, destructive_down = {"tables", ...},
--      -- lock_timeout = "10s", statement_timeout = "5min", adopt = {...}
--    }
--
-- Revision ids are 1-32 lowercase letters and digits; the runner makes
-- 12 random hex digits (like Alembic's). NNNN only orders the folder
-- listing for people: the chain is made by `down_revision` alone.
-- Everything is checked before any database is touched: malformed file
-- names, malformed scripts, duplicate ids, a `down_revision` that names no
-- script, several bases, cycles and several heads are all errors.
-- @module caracal.migrate.scripts
local core = require "caracal.core"

local M = {}

--- File names: sequence, revision id, optional slug.
M.FILE_PATTERN = "^(%d+)_([0-9a-z]+)_?([%w_%-]*)%.lua$"
local REVISION_PATTERN = "^[0-9a-z]+$"

local function fail(kind, fmt, ...)
  error(core.Error { message = string.format(fmt, ...), kind = kind }, 0)
end

--- The migrations folder in force: `opts.dir`, else
-- `$CARACAL_MIGRATIONS_DIR`, else the host's (`caracal.core.migrations_dir`).
-- @tparam[opt] table opts
-- @treturn string
function M.dir(opts)
  if opts and opts.dir then return opts.dir end
  local env = os.getenv("CARACAL_MIGRATIONS_DIR")
  if env and env ~= "" then return env end
  return core.migrations_dir
end

--- Normalise a script's text for its checksum, so that line endings, a
-- UTF-8 BOM, trailing whitespace and trailing blank lines are not drift:
-- BOM stripped, CRLF and CR made LF, each line right-trimmed, trailing
-- blank lines dropped.
-- @tparam string src
-- @treturn string
function M.normalise(src)
  src = src:gsub("^\239\187\191", ""):gsub("\r\n?", "\n")
  local lines = {}
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line:gsub("[ \t\f\v]+$", "")
  end
  while #lines > 0 and lines[#lines] == "" do lines[#lines] = nil end
  return table.concat(lines, "\n")
end

--- The checksum of a script: SHA-256 hex of its normalised text.
-- @tparam string src
-- @treturn string
function M.checksum(src)
  return core.sha256_hex(M.normalise(src))
end

-- The names in a folder (without . and ..), sorted. lfs when it is
-- there; otherwise `ls`, whose output is safe to read because any name
-- that does not match FILE_PATTERN is refused anyway.
local function list_dir(dir)
  local ok, lfs = pcall(require, "lfs")
  local names = {}
  if ok and type(lfs) == "table" and lfs.dir then
    local attr = lfs.attributes(dir, "mode")
    if attr ~= "directory" then return nil, "no such folder" end
    for name in lfs.dir(dir) do
      if name ~= "." and name ~= ".." then names[#names + 1] = name end
    end
  else
    local quoted = "'" .. dir:gsub("'", "'\\''") .. "'"
    local p = io.popen("test -d " .. quoted .. " && ls -1A -- " .. quoted .. " 2>/dev/null; echo \"__rc=$?\"")
    local out = p:read("a")
    p:close()
    if not out:find("__rc=0%s*$") and not out:find("\n__rc=0") then return nil, "no such folder" end
    out = out:gsub("__rc=%d+%s*$", "")
    for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

-- The globals a migration sees: the safe standard ones (copies, so a
-- script cannot change the runner's own string or table library) and
-- `caracal`. No io, os.execute, require, load or debug: a migration
-- talks to the database only through `op`.
local function script_env()
  local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type, xpcall = xpcall,
    rawequal = rawequal, rawlen = rawlen, rawget = rawget,
    string = copy(string), table = copy(table), math = copy(math), utf8 = copy(utf8),
    os = { time = os.time, clock = os.clock, date = os.date },
    caracal = require("caracal"),
  }
  env._G = env
  return env
end

local KNOWN_KEYS = { revision = true, down_revision = true, message = true, up = true, down = true,
  transaction = true, destructive_down = true, lock_timeout = true, statement_timeout = true,
  adopt = true }

-- A timeout as PostgreSQL takes it: integer milliseconds or "<n><unit>".
-- `where` prefixes the message (a script's name); nil means an option.
local function check_timeout(where, key, v)
  if v == nil then return nil end
  if math.type(v) == "integer" and v >= 0 then return tostring(v) end -- milliseconds
  if type(v) == "string" and (v:match("^%d+$") or v:match("^%d+%s*ms$") or v:match("^%d+%s*s$")
      or v:match("^%d+%s*min$") or v:match("^%d+%s*h$")) then
    return v
  end
  fail(where and "invalid_script" or "usage", "%s%s must be milliseconds or text like '10s', '500ms', " ..
    "'5min', '1h', got %s", where and (where .. ": ") or "", key, tostring(v))
end

--- Validate a timeout option (milliseconds, or text like '10s').
-- @tparam string what the option's name, for the message
-- @param v
-- @treturn string|nil the value as SQL text
function M.check_timeout(what, v) return check_timeout(nil, what, v) end

-- Load one script file into a record; raises with the file named.
local function load_script(dir, label_dir, file)
  local seq, rev = file:match(M.FILE_PATTERN)
  local path = dir .. "/" .. file
  local f, err = io.open(path, "rb")
  if not f then fail("invalid_script", "cannot read %s: %s", path, err) end
  local src = f:read("a")
  f:close()
  local display = label_dir .. "/" .. file
  if src:find("\0", 1, true) then fail("invalid_script", "%s: contains a NUL byte", display) end
  -- Text only: a binary chunk can crash the interpreter. A BOM is not Lua.
  local chunk, lerr = load((src:gsub("^\239\187\191", "")), "@" .. display, "t", script_env())
  if not chunk then fail("invalid_script", "%s", lerr) end
  local ok, t = pcall(chunk)
  if not ok then fail("invalid_script", "%s: %s", display, tostring(t)) end
  if type(t) ~= "table" then
    fail("invalid_script", "%s must return a table {revision=, down_revision=, message=, up=, down=}, got %s",
      display, type(t))
  end
  for k in pairs(t) do
    if not KNOWN_KEYS[k] then fail("invalid_script", "%s: unknown field '%s'", display, tostring(k)) end
  end
  if type(t.revision) ~= "string" or not t.revision:match(REVISION_PATTERN) or #t.revision > 32 then
    fail("invalid_script", "%s: revision must be 1-32 lowercase letters and digits, got %s", display,
      tostring(t.revision))
  end
  if t.revision ~= rev then
    fail("invalid_script", "%s: the file name says revision %s but the script says %s", display, rev, t.revision)
  end
  if t.down_revision ~= nil and (type(t.down_revision) ~= "string" or not t.down_revision:match(REVISION_PATTERN)) then
    fail("invalid_script", "%s: down_revision must be a revision id or nil, got %s", display, tostring(t.down_revision))
  end
  if type(t.message) ~= "string" or t.message == "" then
    fail("invalid_script", "%s: message must be a non-empty string", display)
  end
  if type(t.up) ~= "function" or type(t.down) ~= "function" then
    fail("invalid_script", "%s: up and down must both be functions (every revision needs a working down)", display)
  end
  if t.transaction ~= nil and type(t.transaction) ~= "boolean" then
    fail("invalid_script", "%s: transaction must be true or false", display)
  end
  if t.destructive_down ~= nil then
    if type(t.destructive_down) ~= "table" then
      fail("invalid_script", "%s: destructive_down must be a list of table names", display)
    end
    for _, name in ipairs(t.destructive_down) do
      if type(name) ~= "string" then fail("invalid_script", "%s: destructive_down must list table names", display) end
    end
  end
  if t.adopt ~= nil and (type(t.adopt) ~= "table" or type(t.adopt.alembic) ~= "string") then
    fail("invalid_script", "%s: adopt must be {alembic = \"<version_num>\", tables = {...}}", display)
  end
  return {
    file = file, path = path, display = display, chunkname = "@" .. display,
    seq = tonumber(seq), revision = t.revision, down_revision = t.down_revision, message = t.message,
    up = t.up, down = t.down, transaction = t.transaction ~= false,
    destructive_down = t.destructive_down or {},
    lock_timeout = check_timeout(display, "lock_timeout", t.lock_timeout),
    statement_timeout = check_timeout(display, "statement_timeout", t.statement_timeout),
    adopt = t.adopt, source = src, checksum = M.checksum(src),
  }
end

--- The scripts of a folder, ordered base to head.
-- @type Scripts
local Scripts = {}
Scripts.__index = Scripts

local function short(s)
  return string.format("%04d %s (%s)", s.seq, s.revision, s.display)
end

--- Read a folder and analyse its revision graph without raising on graph
-- problems: returns the Scripts (ordered when the graph is a chain) and a
-- list of problems (strings). Bad files still raise.
-- @tparam[opt] table opts `dir`
-- @treturn Scripts
-- @treturn table problems
function M.scan(opts)
  local dir = M.dir(opts)
  if not dir or dir == "" then fail("no_migrations", "no migrations folder: pass --dir or set CARACAL_MIGRATIONS_DIR") end
  dir = dir:gsub("/+$", "")
  local names, err = list_dir(dir)
  if not names then fail("no_migrations", "cannot read the migrations folder %s: %s", dir, err) end
  local label_dir = dir:match("([^/]+)$") or dir
  local all, by_rev, problems = {}, {}, {}
  for _, name in ipairs(names) do
    if name:sub(1, 1) ~= "." and name:match("%.lua$") then
      if not name:match(M.FILE_PATTERN) then
        fail("invalid_script", "%s/%s: malformed migration file name: expected NNNN_<revision>_<words>.lua " ..
          "(revision: lowercase letters and digits), as `caracal db revision -m MESSAGE` makes them",
          label_dir, name)
      end
      local s = load_script(dir, label_dir, name)
      if by_rev[s.revision] then
        fail("invalid_script", "duplicate revision %s: %s and %s", s.revision, by_rev[s.revision].display, s.display)
      end
      by_rev[s.revision] = s
      all[#all + 1] = s
    end
  end
  local children, bases = {}, {}
  for _, s in ipairs(all) do
    if s.down_revision == nil then
      bases[#bases + 1] = s
    elseif not by_rev[s.down_revision] then
      problems[#problems + 1] = string.format("%s revises %s, which is not among the scripts in %s",
        s.display, s.down_revision, dir)
    else
      local c = children[s.down_revision] or {}
      c[#c + 1] = s
      children[s.down_revision] = c
    end
  end
  local heads = {}
  for _, s in ipairs(all) do
    if not children[s.revision] then heads[#heads + 1] = s end
  end
  local self = setmetatable({ dir = dir, label_dir = label_dir, by_rev = by_rev, all = all, list = {},
                              heads = heads, problems = problems }, Scripts)
  if #bases > 1 then
    local names_ = {}
    for _, b in ipairs(bases) do names_[#names_ + 1] = short(b) end
    problems[#problems + 1] = "several base revisions (down_revision = nil): " .. table.concat(names_, ", ")
  end
  for parent, c in pairs(children) do
    if #c > 1 then
      table.sort(c, function(a, b) return a.file < b.file end)
      local names_ = {}
      for _, s in ipairs(c) do names_[#names_ + 1] = short(s) end
      problems[#problems + 1] = string.format("multiple heads: %s all revise %s; make one of them revise " ..
        "the other (edit its down_revision) so the chain is linear again", table.concat(names_, " and "),
        short(by_rev[parent]))
    end
  end
  if #problems == 0 and #all > 0 then
    if #bases == 0 then
      problems[#problems + 1] = "no base revision (every script has a down_revision): the chain is a cycle"
    else
      local s = bases[1]
      while s do
        self.list[#self.list + 1] = s
        local c = children[s.revision]
        s = c and c[1]
        if #self.list > #all then break end
      end
      if #self.list ~= #all then
        problems[#problems + 1] = "the revisions do not form one chain from the base (a cycle?)"
        self.list = {}
      end
    end
  end
  for i, s in ipairs(self.list) do s.index = i end
  self.head = self.list[#self.list]
  return self, problems
end

--- Load and validate a folder: a linear chain of valid scripts.
-- @tparam[opt] table opts `dir`
-- @treturn Scripts
-- @raise caracal.Error (kind "invalid_script", "multiple_heads", ...)
function M.load(opts)
  local self, problems = M.scan(opts)
  if #problems > 0 then
    local kind = problems[1]:find("^multiple heads") and "multiple_heads" or "invalid_chain"
    fail(kind, "%s", table.concat(problems, "\n"))
  end
  return self
end

--- The script at a position (1 = base), or nil.
function Scripts:at(i) return self.list[i] end

--- Number of scripts.
function Scripts:count() return #self.list end

--- Position of a revision id, or nil when no script has it.
function Scripts:index(rev)
  local s = rev and self.by_rev[rev]
  return s and s.index or nil
end

--- Resolve a revision id or unique prefix to its script.
-- @tparam string text
-- @treturn table script
-- @raise caracal.Error "unknown_revision" or "ambiguous_revision"
function Scripts:find(text)
  if self.by_rev[text] then return self.by_rev[text] end
  local found = {}
  for _, s in ipairs(self.list) do
    if s.revision:sub(1, #text) == text then found[#found + 1] = s end
  end
  if #found == 1 then return found[1] end
  if #found == 0 then
    fail("unknown_revision", "unknown revision '%s': no script in %s has that id or id prefix", text, self.dir)
  end
  local names_ = {}
  for _, s in ipairs(found) do names_[#names_ + 1] = s.revision end
  fail("ambiguous_revision", "revision prefix '%s' is ambiguous: %s", text, table.concat(names_, ", "))
end

--- Resolve a target to a position (0 = base, count = head), given the
-- current position (for `+N` / `-N`).
-- @tparam string target `head`, `base`, an id or unique prefix, `+N`, `-N`
-- @tparam[opt] integer current
-- @treturn integer
function Scripts:resolve(target, current)
  if type(target) ~= "string" or target == "" then
    fail("usage", "a target is needed: head, base, a revision id or prefix, +N or -N")
  end
  if target == "head" or target == "heads" then return #self.list end
  if target == "base" then return 0 end
  local sign, n = target:match("^([+-])(%d+)$")
  if sign then
    if current == nil then fail("usage", "relative target %s needs a current revision (not with --sql)", target) end
    n = tonumber(n)
    local to = sign == "+" and current + n or current - n
    if to < 0 or to > #self.list then
      fail("usage", "target %s is out of range: the current position is %d of %d", target, current, #self.list)
    end
    return to
  end
  return self:find(target).index
end

--- "0002 d1e2f3a4b5c6 hardening" for messages.
function M.label(s)
  if not s then return "base" end
  return string.format("%04d %s (%s)", s.seq, s.revision, s.message)
end

M.Scripts = Scripts
return M
