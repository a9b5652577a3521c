--- `caracal mandate issue|validate|revoke|list|show`: execution mandates.
-- @module caracal.tasks.mandate
local authority = require "caracal.authority"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal mandate issue --issuer P --subject P --resources PATTERNS --actions PATTERNS
                             --validity SECONDS [--parent MANDATE] [--intent-hash HEX]
                             [--metadata JSON] [--json]
       caracal mandate validate MANDATE --action A --resource R [--json]
       caracal mandate revoke MANDATE --by P --reason TEXT [--no-cascade] [--yes]
       caracal mandate list [--subject P] [--all] [--json]
       caracal mandate show MANDATE [--json]

issue     signs a mandate with the issuer's key, within the issuer's active
          policy (and the parent mandate's scopes and window, when
          delegating); every refusal names its rule and writes nothing
validate  checks a mandate for an action on a resource (fail-closed) and
          records the decision as an authority event; exit 0 allowed, 1 denied
revoke    revokes a mandate and, unless --no-cascade, its descendants; asks
          first when that is more than one mandate
P is a principal's name or id; PATTERNS are comma-separated (`*` matches
any run of characters).
]==]

local SPEC = { issuer = "value", subject = "value", resources = "value", actions = "value",
               validity = "value", parent = "value", ["intent-hash"] = "value", metadata = "value",
               action = "value", resource = "value", by = "value", reason = "value",
               ["no-cascade"] = "flag", all = "flag", json = "flag", yes = "flag" }

local function need(opts, name, what)
  local v = opts[name:gsub("%-", "_")]
  if not v then error({ usage = what .. " needs --" .. name }, 0) end
  return v
end

local handlers = {}

function handlers.issue(ctx, opts)
  local validity = math.tointeger(tonumber(need(opts, "validity", "mandate issue")))
  if not validity then error({ usage = "--validity must be an integer number of seconds" }, 0) end
  local mandate = ctx.manager():session_scope(function(s)
    return authority.issue_mandate(s, {
      issuer_id = task.need_principal(s, need(opts, "issuer", "mandate issue")).principal_id,
      subject_id = task.need_principal(s, need(opts, "subject", "mandate issue")).principal_id,
      resource_scope = task.list_option(need(opts, "resources", "mandate issue")),
      action_scope = task.list_option(need(opts, "actions", "mandate issue")),
      validity_seconds = validity, parent_mandate_id = opts.parent, intent_hash = opts.intent_hash,
      metadata = task.json_option("metadata", opts.metadata),
    })
  end)
  task.emit(opts, mandate, function() io.write("issued ", tostring(mandate), "\n") end)
end

function handlers.validate(ctx, opts, words)
  if not words[2] then error({ usage = "mandate validate needs a MANDATE id" }, 0) end
  local decision = ctx.manager():session_scope(function(s)
    return authority.validate_mandate(s, words[2], need(opts, "action", "mandate validate"),
                                      need(opts, "resource", "mandate validate"))
  end)
  task.emit(opts, decision, function()
    io.write(decision.allowed and "allowed\n" or ("denied: " .. tostring(decision.reason) .. "\n"))
  end)
  return decision.allowed and 0 or 1
end

function handlers.revoke(ctx, opts, words)
  if not words[2] then error({ usage = "mandate revoke needs a MANDATE id" }, 0) end
  local cascade = not opts.no_cascade
  local manager = ctx.manager()
  if cascade and not (opts.yes or ctx.yes) then
    -- Count what a cascade would revoke, and ask before revoking many.
    local n = manager:session_scope(function(s)
      return s:scalar([[
        WITH RECURSIVE tree AS (
          SELECT mandate_id FROM execution_mandates WHERE mandate_id = $1
          UNION ALL
          SELECT m.mandate_id FROM execution_mandates m JOIN tree t ON m.parent_mandate_id = t.mandate_id
           WHERE NOT m.revoked)
        SELECT count(*) FROM tree]], words[2])
    end)
    if n > 1 and not ctx.confirm(string.format("Revoke %d mandates (the mandate and its descendants)?", n)) then
      io.stderr:write("caracal: not confirmed; pass --yes to revoke without asking\n")
      return 1
    end
  end
  local result = manager:session_scope(function(s)
    local by = task.need_principal(s, need(opts, "by", "mandate revoke"))
    return authority.revoke_mandate(s, words[2], by.principal_id, need(opts, "reason", "mandate revoke"),
                                    { cascade = cascade })
  end)
  task.emit(opts, result, function()
    io.write(string.format("revoked %d mandate%s\n", #result.revoked, #result.revoked == 1 and "" or "s"))
  end)
end

function handlers.list(ctx, opts)
  local list = ctx.manager():session_scope(function(s)
    local filters = {}
    if opts.subject then filters.subject_id = task.need_principal(s, opts.subject).principal_id end
    if not opts.all then filters.revoked = false end
    return s:query("ExecutionMandate", filters, { order_by = { "created_at" } })
  end)
  task.emit(opts, list, function()
    task.print_table(list, { "mandate_id", "subject_id", "valid_until", "delegation_depth", "revoked" })
  end)
end

function handlers.show(ctx, opts, words)
  if not words[2] then error({ usage = "mandate show needs a MANDATE id" }, 0) end
  local m = ctx.manager():session_scope(function(s) return authority.get_mandate(s, words[2]) end)
  if not m then
    error(require("caracal.core").Error { kind = "not_found", message = "unknown mandate '" .. words[2] .. "'" }, 0)
  end
  task.emit(opts, m, function()
    for _, k in ipairs({ "mandate_id", "issuer_id", "subject_id", "valid_from", "valid_until", "delegation_depth",
                         "parent_mandate_id", "revoked", "revoked_at", "revocation_reason", "signature" }) do
      io.write(string.format("%-18s %s\n", k, tostring(m[k] == nil and "-" or m[k])))
    end
    io.write(string.format("%-18s %s\n%-18s %s\n", "resource_scope", table.concat(m.resource_scope, ","),
                           "action_scope", table.concat(m.action_scope, ",")))
  end)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
