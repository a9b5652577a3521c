--- Where a database stands against the migration scripts: its current
-- revision (recorded, or adoptable from the Python tool's alembic_version),
-- pending revisions, drift (applied scripts edited since), a dirty mark,
-- or a revision the scripts do not know. Reading never writes.
-- @module caracal.migrate.status
local core = require "caracal.core"
local scripts_mod = require "caracal.migrate.scripts"
local history = require "caracal.migrate.history"

local M = {}

local function raise(fields)
  error(core.Error(fields), 0)
end

-- First differing line of two texts (normalised), for drift reports.
local function first_difference(stored, loc)
  local a, b = {}, {}
  for l in (scripts_mod.normalise(stored or "") .. "\n"):gmatch("([^\n]*)\n") do a[#a + 1] = l end
  for l in (scripts_mod.normalise(loc) .. "\n"):gmatch("([^\n]*)\n") do b[#b + 1] = l end
  for i = 1, math.max(#a, #b) do
    if a[i] ~= b[i] then return i, a[i], b[i] end
  end
  return nil
end

--- The migration status of a database against the scripts. Read-only;
-- runs in the session's transaction (the caller ends it).
-- @tparam Session session
-- @tparam Scripts scripts
-- @tparam[opt] table opts `with_text` (read stored script texts, to show
-- where a drifted script differs)
-- @treturn table `{state, scripts, head, count, current, index, pending,
-- adopt, dirty, drift = {...}, kind ("ahead", "unknown", "unversioned"), problem}`
function M.read(session, scripts, opts)
  local state = history.read(session, { scripts = opts and opts.with_text })
  local st = { state = state, scripts = scripts, head = scripts.head, count = scripts:count(), drift = {} }
  if state.forked then
    st.kind = "unknown"
    st.problem = "the history table has several tips (" .. table.concat(state.forked, ", ") ..
      "): it was edited by hand; fix it with `caracal db stamp <revision>`"
  elseif state.current then
    st.current = state.current
    st.index = scripts:index(state.current)
    if not st.index then
      local head = scripts.head and scripts.head.revision
      for _, rev in ipairs(history.ancestry(state, state.current)) do
        if rev == head then st.kind = "ahead" break end
      end
      st.kind = st.kind or "unknown"
      if st.kind == "ahead" then
        st.problem = string.format("the database is at revision %s, newer than the newest script here " ..
          "(%s, in %s): it was upgraded by a newer Caracal", state.current, head, scripts.dir)
      else
        st.problem = string.format("the database is at revision %s, which is not among the scripts in %s " ..
          "(was a script deleted, or are these the wrong migrations?)", state.current, scripts.dir)
      end
    end
  elseif state.alembic and not next(state.rows) then
    local adopt
    for _, s in ipairs(scripts.list) do
      if s.adopt and s.adopt.alembic == state.alembic then adopt = s end
    end
    if not adopt then
      st.kind = "unknown"
      local known = {}
      for _, s in ipairs(scripts.list) do if s.adopt then known[#known + 1] = s.adopt.alembic end end
      st.problem = string.format("the database was made by the Python tool at alembic revision %s; " ..
        "only a database at %s can be adopted", state.alembic,
        #known > 0 and table.concat(known, ", ") or "(none: no script declares adopt)")
    else
      local missing = {}
      local present = history.existing_tables(session, adopt.adopt.tables or {})
      local have = {}
      for _, t in ipairs(present) do have[t] = true end
      for _, t in ipairs(adopt.adopt.tables or {}) do if not have[t] then missing[#missing + 1] = t end end
      if #missing > 0 then
        st.kind = "unknown"
        st.problem = string.format("alembic_version says %s but tables %s are missing", state.alembic,
          table.concat(missing, ", "))
      else
        st.adopt = adopt
        st.current = adopt.revision
        st.index = adopt.index
      end
    end
  else
    st.index = 0
    local known = {}
    for _, s in ipairs(scripts.list) do
      for _, t in ipairs(s.adopt and s.adopt.tables or {}) do known[#known + 1] = t end
    end
    local found = #known > 0 and history.existing_tables(session, known) or {}
    if #found > 0 then
      st.kind = "unversioned"
      st.problem = string.format("the database has Caracal tables (%s) but no recorded revision: if its " ..
        "schema is that of a revision, record it with `caracal db stamp <revision>`", table.concat(found, ", "))
    end
  end
  if state.dirty then
    st.dirty = state.dirty
  end
  if st.index then st.pending = st.count - st.index end
  for _, row in ipairs(state.list) do
    local s = scripts.by_rev[row.revision]
    if s and s.checksum ~= row.checksum then
      local d = { revision = row.revision, file = s.display, stored = row.checksum, ["local"] = s.checksum }
      if row.script then d.line, d.stored_line, d.local_line = first_difference(row.script, s.source) end
      st.drift[#st.drift + 1] = d
    end
  end
  return st
end

--- The report of drifted scripts.
function M.drift_message(st)
  local lines = { "migration scripts were edited after they were applied:" }
  for _, d in ipairs(st.drift) do
    lines[#lines + 1] = string.format("  %s (%s): stored checksum %s, local %s", d.revision, d.file,
      d.stored, d["local"])
    if d.line then
      lines[#lines + 1] = string.format("    first difference at line %d: applied %q, now %q", d.line,
        d.stored_line or "", d.local_line or "")
    end
  end
  return table.concat(lines, "\n")
end

--- What a dirty database means and the two ways out.
function M.dirty_message(row)
  return string.format("the database is dirty: revision %s (%s) runs outside a transaction and did not " ..
    "complete, so its changes may be half applied. Fix the schema by hand, then run " ..
    "`caracal db force %s` if the revision's changes are all in place, or `caracal db force %s` if none are",
    row.revision, row.file, row.revision, row.down_revision or "base")
end

--- Refuse to change anything when the state is not one a runner can
-- reason about: dirty, ahead, unknown, unversioned, or drifted.
-- @tparam table st from `read`
-- @tparam string what the command, for messages ("upgrade")
function M.guard(st, what)
  if st.dirty then raise { kind = "schema_dirty", revision = st.dirty.revision, message = M.dirty_message(st.dirty) } end
  if st.kind then
    raise { kind = st.kind == "ahead" and "schema_ahead" or "schema_unknown", message = st.problem }
  end
  if #st.drift > 0 then
    raise { kind = "drift", drift = st.drift, message = M.drift_message(st),
            hint = "restore the applied text (the history table keeps it), or accept the change with " ..
                   "`caracal db accept <revision> -m REASON`; nothing was " .. what .. "d" }
  end
end

return M
