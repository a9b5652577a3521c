--- `caracal principal add|list|show`: principal identities.
-- A short script on the public API; copy it to write your own task.
-- @module caracal.tasks.principal
local authority = require "caracal.authority"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal principal add NAME --type agent|user|service --owner OWNER
                             [--parent NAME|ID] [--metadata JSON] [--generate-keys]
       caracal principal list [--type TYPE] [--json]
       caracal principal show NAME|ID [--json]

add   registers a principal; --generate-keys gives it an ECDSA P-256 key
      pair (needed to issue mandates and sign Merkle roots)
list  every principal, oldest first
show  one principal (its private key is never printed)
]==]

local SPEC = { type = "value", owner = "value", parent = "value", metadata = "value",
               ["generate-keys"] = "flag", json = "flag" }

local function show_principal(p)
  local has_key = p.public_key_pem and "yes" or "no"
  io.write(string.format("principal_id  %s\nname          %s\ntype          %s\nowner         %s\n" ..
    "parent        %s\ncreated_at    %s\nkeys          %s\n", p.principal_id, p.name, p.principal_type,
    p.owner, p.parent_principal_id or "-", tostring(p.created_at), has_key))
  if p.principal_metadata then
    io.write("metadata      ", require("caracal.core").json_encode(p.principal_metadata), "\n")
  end
end

local handlers = {}

function handlers.add(ctx, opts, words)
  local name = words[2]
  if not name then error({ usage = "principal add needs a NAME" }, 0) end
  if not opts.type then error({ usage = "principal add needs --type agent|user|service" }, 0) end
  if not opts.owner then error({ usage = "principal add needs --owner" }, 0) end
  local metadata = task.json_option("metadata", opts.metadata)
  local p = ctx.manager():session_scope(function(s)
    local parent = opts.parent and task.need_principal(s, opts.parent) or nil
    return authority.add_principal(s, {
      name = name, principal_type = opts.type, owner = opts.owner, metadata = metadata,
      parent_principal_id = parent and parent.principal_id, generate_keys = opts.generate_keys or false,
    })
  end)
  task.emit(opts, p, function() io.write("added ", tostring(p), "\n") end)
end

function handlers.list(ctx, opts)
  local filters = opts.type and { principal_type = opts.type } or nil
  local list = ctx.manager():session_scope(function(s)
    return s:query("Principal", filters, { order_by = { "created_at", "name" } })
  end)
  task.emit(opts, list, function()
    task.print_table(list, { "name", "principal_type", "owner", "principal_id" })
  end)
end

function handlers.show(ctx, opts, words)
  if not words[2] then error({ usage = "principal show needs a NAME or ID" }, 0) end
  local p = ctx.manager():session_scope(function(s) return task.need_principal(s, words[2]) end)
  task.emit(opts, p, show_principal)
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
