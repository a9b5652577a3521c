--- `caracal policy set|list`: mandate issuance policies.
-- @module caracal.tasks.policy
local authority = require "caracal.authority"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal policy set PRINCIPAL --max-validity SECONDS --resources PATTERNS
                          --actions PATTERNS [--allow-delegation] [--max-depth N]
                          [--created-by WHO]
       caracal policy list [PRINCIPAL] [--all] [--json]

set   gives PRINCIPAL (a name or id) a new active policy; the previous one
      is deactivated in the same transaction. PATTERNS are comma-separated;
      `*` matches any run of characters.
list  active policies (--all: inactive ones too)
]==]

local SPEC = { ["max-validity"] = "value", resources = "value", actions = "value",
               ["allow-delegation"] = "flag", ["max-depth"] = "value", ["created-by"] = "value",
               all = "flag", json = "flag" }

local function integer_option(name, v)
  if v == nil then return nil end
  local n = math.tointeger(tonumber(v))
  if not n then error({ usage = string.format("--%s must be an integer, got '%s'", name, v) }, 0) end
  return n
end

local handlers = {}

function handlers.set(ctx, opts, words)
  if not words[2] then error({ usage = "policy set needs a PRINCIPAL" }, 0) end
  if not opts.max_validity then error({ usage = "policy set needs --max-validity SECONDS" }, 0) end
  local policy = ctx.manager():session_scope(function(s)
    local p = task.need_principal(s, words[2])
    return authority.set_policy(s, p.principal_id, {
      max_validity_seconds = integer_option("max-validity", opts.max_validity),
      allowed_resource_patterns = task.list_option(opts.resources),
      allowed_actions = task.list_option(opts.actions),
      allow_delegation = opts.allow_delegation or false,
      max_delegation_depth = integer_option("max-depth", opts.max_depth) or 0,
      created_by = opts.created_by or os.getenv("USER") or "caracal",
    })
  end)
  task.emit(opts, policy, function() io.write("active policy ", policy.policy_id, "\n") end)
end

function handlers.list(ctx, opts, words)
  local list = ctx.manager():session_scope(function(s)
    local filters = {}
    if words[2] then filters.principal_id = task.need_principal(s, words[2]).principal_id end
    if not opts.all then filters.active = true end
    return s:query("AuthorityPolicy", filters, { order_by = { "created_at" } })
  end)
  task.emit(opts, list, function()
    local shown = {}
    for i, p in ipairs(list) do
      shown[i] = {
        principal_id = p.principal_id, active = p.active, max_validity_seconds = p.max_validity_seconds,
        resources = table.concat(p.allowed_resource_patterns, ","),
        actions = table.concat(p.allowed_actions, ","),
        delegation = p.allow_delegation and ("depth " .. p.max_delegation_depth) or "no",
      }
    end
    task.print_table(shown, { "principal_id", "active", "max_validity_seconds", "resources", "actions", "delegation" })
  end)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
