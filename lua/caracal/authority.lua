--- Principals, authority policies and execution mandates: issue, validate,
-- revoke, exactly as shared/spec/domain.md describes, so mandates written
-- here verify with the original Caracal Core and the other way round.
--
--    local authority = require "caracal.authority"
--    manager:session_scope(function(s)
--      local admin = authority.add_principal(s, {name = "admin", principal_type = "user", owner = "ops"})
--      local bot = authority.add_principal(s, {name = "bot", principal_type = "agent", owner = "ops"})
--      authority.set_policy(s, admin.principal_id, {max_validity_seconds = 3600,
--        allowed_resource_patterns = {"api:*"}, allowed_actions = {"call"}, created_by = "ops"})
--      local m = authority.issue_mandate(s, {issuer_id = admin.principal_id, subject_id = bot.principal_id,
--        resource_scope = {"api:openai:*"}, action_scope = {"call"}, validity_seconds = 600})
--      local d = authority.validate_mandate(s, m.mandate_id, "call", "api:openai:gpt-4")
--      assert(d.allowed)
--    end)
--
-- Every operation runs in `session:session_scope`: one transaction when
-- the session is idle, a savepoint inside the caller's transaction
-- otherwise. A refusal raises a `caracal.Error` with `kind = "refused"`,
-- `rule` (a stable name such as "no_active_policy") and a message naming
-- the rule; nothing of the operation is written. Bad arguments raise
-- `kind = "validation"`.
--
-- Validation never raises for a denial: it returns a decision and writes a
-- `validated` or `denied` authority event (principal = the mandate's
-- subject). For a missing mandate there is no subject, and
-- `authority_ledger_events.principal_id` is NOT NULL: the event is written
-- only when the caller names the requesting principal
-- (`opts.principal_id`); otherwise the denial is returned and nothing is
-- written. (The original tried to write it with a NULL principal, which
-- the database rejects.)
-- @module caracal.authority
local core = require "caracal.core"
local models = require "caracal.models"
local crypto = require "caracal.crypto"

local M = {}

---------------------------------------------------------------------------
-- Errors
---------------------------------------------------------------------------

local function user_where()
  local ok, db = pcall(require, "caracal.db")
  if ok and db.user_where then return db.user_where(3) end
  return nil
end

local function refuse(rule, fmt, ...)
  error(core.Error { kind = "refused", rule = rule, message = string.format(fmt, ...),
                     where = user_where() }, 0)
end

local function invalid(field, fmt, ...)
  error(core.Error { kind = "validation", field = field,
                     message = string.format(fmt, ...), where = user_where() }, 0)
end

-- A short quoted rendering of a value for messages.
local function show(v)
  if type(v) == "string" then
    if #v > 80 then return string.format("%q...", v:sub(1, 80)) end
    return string.format("%q", v)
  end
  return tostring(v)
end

-- At most n UTF-8 characters of s (columns are VARCHAR(n)).
local function clip(s, n)
  if s == nil then return nil end
  local len = utf8.len(s)
  if not len or len <= n then return s end
  return s:sub(1, utf8.offset(s, n + 1) - 1)
end

---------------------------------------------------------------------------
-- Scopes and matching (pure)
---------------------------------------------------------------------------

--- Does value match pattern? Equal strings match; in a pattern holding
-- `*`, each `*` stands for any run of characters (possibly empty) and the
-- pattern must cover the whole value; every other character is literal
-- (no regex or Lua pattern syntax: `.`, `(`, `[`, `+`, `%` are plain).
-- @tparam string value
-- @tparam string pattern
-- @treturn boolean
function M.match(value, pattern)
  if type(value) ~= "string" or type(pattern) ~= "string" then return false end
  if value == pattern then return true end
  if not pattern:find("*", 1, true) then return false end
  local parts, start = {}, 1
  while true do
    local i = pattern:find("*", start, true)
    if not i then
      parts[#parts + 1] = pattern:sub(start)
      break
    end
    parts[#parts + 1] = pattern:sub(start, i - 1)
    start = i + 1
  end
  local head, tail = parts[1], parts[#parts]
  if #head + #tail > #value then return false end
  if value:sub(1, #head) ~= head then return false end
  if #tail > 0 and value:sub(-#tail) ~= tail then return false end
  -- The middle pieces, leftmost first, between the head and the tail:
  -- with `*` the only wildcard, the leftmost placement is always best.
  local pos, limit = #head + 1, #value - #tail
  for k = 2, #parts - 1 do
    local piece = parts[k]
    if #piece > 0 then
      local i, j = value:find(piece, pos, true)
      if not i or j > limit then return false end
      pos = j + 1
    end
  end
  return true
end

--- The first pattern of a list that value matches, or nil.
function M.match_any(value, patterns)
  for _, p in ipairs(patterns or {}) do
    if M.match(value, p) then return p end
  end
  return nil
end

--- Is the child scope a subset of the parent patterns? Each child entry,
-- taken literally (a `*` in it is just a character), must match some
-- parent pattern.
-- @treturn boolean
-- @treturn[opt] string the first child entry that matches nothing
function M.is_subset(child, parent)
  for _, entry in ipairs(child or {}) do
    if not M.match_any(entry, parent) then return false, entry end
  end
  return true
end

---------------------------------------------------------------------------
-- Argument checks
---------------------------------------------------------------------------

local function check_uuid(v, field)
  if type(v) ~= "string" or not core.is_uuid(v) then
    invalid(field, "%s must be a UUID, got %s", field, show(v))
  end
  return core.uuid(v)
end

local function check_strings(v, field)
  if type(v) ~= "table" then invalid(field, "%s must be an array of strings, got %s", field, type(v)) end
  local n = #v
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      invalid(field, "%s must be an array of strings, got a table with key %s", field, show(k))
    end
  end
  local out = core.json_array()
  for i = 1, n do
    if type(v[i]) ~= "string" then
      invalid(field, "%s[%d] must be a string, got %s", field, i, type(v[i]))
    end
    out[i] = v[i]
  end
  return out
end

---------------------------------------------------------------------------
-- Lookups
---------------------------------------------------------------------------

local function get_principal(s, id)
  return s:first("SELECT * FROM principals WHERE principal_id = $1", id)
end

--- The active authority policy of a principal (the newest, should there
-- be several, as revision 1 allows), or nil.
-- @param session
-- @tparam string principal_id
-- @return an AuthorityPolicy object or nil
function M.get_active_policy(session, principal_id)
  local row = session:first(
    "SELECT * FROM authority_policies WHERE principal_id = $1 AND active " ..
    "ORDER BY created_at DESC, policy_id LIMIT 1", principal_id)
  return row and models.from_row(models.AuthorityPolicy.__table, row) or nil
end

local function mandate_object(row)
  return row and models.from_row(models.ExecutionMandate.__table, row) or nil
end

--- A mandate by id (an ExecutionMandate object), or nil.
function M.get_mandate(session, mandate_id)
  if type(mandate_id) ~= "string" or not core.is_uuid(mandate_id) then return nil end
  return mandate_object(session:first("SELECT * FROM execution_mandates WHERE mandate_id = $1", mandate_id))
end

---------------------------------------------------------------------------
-- Principals and policies
---------------------------------------------------------------------------

--- Add a principal, with a fresh ECDSA P-256 key pair unless told not to.
-- @param session
-- @tparam table spec `name`, `principal_type` (agent, user, service),
-- `owner`, optional `parent_principal_id`, `metadata`,
-- `generate_keys` (default true), or explicit `public_key_pem` /
-- `private_key_pem`
-- @return the Principal object (its `private_key_pem` is never printed by
-- `tostring`)
function M.add_principal(session, spec)
  if type(spec) ~= "table" then invalid(nil, "add_principal: expected a table, got %s", type(spec)) end
  local fields = {
    name = spec.name, principal_type = spec.principal_type, owner = spec.owner,
    parent_principal_id = spec.parent_principal_id,
    principal_metadata = spec.metadata or spec.principal_metadata,
    public_key_pem = spec.public_key_pem, private_key_pem = spec.private_key_pem,
  }
  if fields.private_key_pem then
    local derived = core.ec_public_from_private(fields.private_key_pem)
    if fields.public_key_pem and fields.public_key_pem ~= derived then
      invalid("public_key_pem", "add_principal: public_key_pem is not the public key of private_key_pem")
    end
    fields.public_key_pem = derived
  end
  if spec.generate_keys ~= false and not fields.public_key_pem then
    fields.private_key_pem, fields.public_key_pem = core.ec_generate()
  end
  local p = models.Principal(fields)
  session:session_scope(function(s)
    s:add(p)
    s:flush()
  end)
  return p
end

--- Give a principal a new active authority policy; the previous active
-- one (if any) is deactivated in the same transaction.
-- @param session
-- @tparam string principal_id
-- @tparam table p `max_validity_seconds` (integer > 0),
-- `allowed_resource_patterns`, `allowed_actions` (arrays of patterns),
-- `allow_delegation` (default false), `max_delegation_depth` (default 0),
-- `created_by`
-- @return the new AuthorityPolicy object
-- @raise refused "principal_not_found"; validation errors for bad fields
function M.set_policy(session, principal_id, p)
  principal_id = check_uuid(principal_id, "principal_id")
  if type(p) ~= "table" then invalid(nil, "set_policy: expected a table of policy fields, got %s", type(p)) end
  local policy = models.AuthorityPolicy {
    principal_id = principal_id,
    max_validity_seconds = p.max_validity_seconds,
    allowed_resource_patterns = p.allowed_resource_patterns,
    allowed_actions = p.allowed_actions,
    allow_delegation = p.allow_delegation,
    max_delegation_depth = p.max_delegation_depth,
    created_by = p.created_by,
  }
  return session:session_scope(function(s)
    -- Lock the principal: two concurrent set_policy calls serialize here
    -- and leave exactly one active policy.
    if not s:first("SELECT principal_id FROM principals WHERE principal_id = $1 FOR UPDATE", principal_id) then
      refuse("principal_not_found", "Principal %s not found", principal_id)
    end
    s:execute("UPDATE authority_policies SET active = false WHERE principal_id = $1 AND active", principal_id)
    s:add(policy)
    s:flush()
    return policy
  end)
end

---------------------------------------------------------------------------
-- Issuing
---------------------------------------------------------------------------

--- Issue (and sign) an execution mandate.
--
-- Refused, in this order, with `rule`: "issuer_not_found",
-- "subject_not_found", "no_active_policy", "validity_exceeds_policy",
-- "resource_scope_exceeds_policy", "action_scope_exceeds_policy"; with a
-- parent: "parent_not_found", "parent_revoked", "parent_not_yet_valid",
-- "parent_expired", "resource_scope_exceeds_parent",
-- "action_scope_exceeds_parent", "window_outside_parent",
-- "delegation_depth_exceeded", "delegation_not_allowed" (the parent
-- subject's policy is missing or does not allow delegation); and last
-- "issuer_has_no_key".
-- @param session
-- @tparam table req `issuer_id`, `subject_id`, `resource_scope`,
-- `action_scope`, `validity_seconds` (> 0), optional `parent_mandate_id`,
-- `intent_hash` (hex SHA-256), `metadata` (a JSON object, persisted)
-- @return the ExecutionMandate object as stored
function M.issue_mandate(session, req)
  if type(req) ~= "table" then invalid(nil, "issue_mandate: expected a table, got %s", type(req)) end
  local issuer_id = check_uuid(req.issuer_id, "issuer_id")
  local subject_id = check_uuid(req.subject_id, "subject_id")
  local resource_scope = check_strings(req.resource_scope, "resource_scope")
  local action_scope = check_strings(req.action_scope, "action_scope")
  local validity = req.validity_seconds
  if type(validity) ~= "number" or validity ~= validity or validity <= 0 or validity == math.huge then
    invalid("validity_seconds", "validity_seconds must be a positive number of seconds, got %s", show(validity))
  end
  local parent_id = req.parent_mandate_id
  if parent_id ~= nil then parent_id = check_uuid(parent_id, "parent_mandate_id") end
  local intent_hash = req.intent_hash
  if intent_hash ~= nil and (type(intent_hash) ~= "string" or #intent_hash > 64) then
    invalid("intent_hash", "intent_hash must be a string of at most 64 characters (hex SHA-256)")
  end
  if req.metadata ~= nil and type(req.metadata) ~= "table" then
    invalid("metadata", "metadata must be a table (a JSON object), got %s", type(req.metadata))
  end

  return session:session_scope(function(s)
    local issuer = get_principal(s, issuer_id)
    if not issuer then refuse("issuer_not_found", "Issuer %s not found", issuer_id) end
    if not get_principal(s, subject_id) then refuse("subject_not_found", "Subject %s not found", subject_id) end

    local policy = M.get_active_policy(s, issuer_id)
    if not policy then
      refuse("no_active_policy", "Issuer %s does not have an active authority policy", issuer_id)
    end
    if validity > policy.max_validity_seconds then
      refuse("validity_exceeds_policy", "Requested validity %ss exceeds policy limit %ss",
             tostring(validity), tostring(policy.max_validity_seconds))
    end
    local ok, bad = M.is_subset(resource_scope, policy.allowed_resource_patterns)
    if not ok then
      refuse("resource_scope_exceeds_policy",
             "Requested resource scope exceeds policy limits: %s matches no allowed resource pattern", show(bad))
    end
    ok, bad = M.is_subset(action_scope, policy.allowed_actions)
    if not ok then
      refuse("action_scope_exceeds_policy",
             "Requested action scope exceeds policy limits: %s matches no allowed action", show(bad))
    end

    local now = core.utcnow()
    local valid_from, valid_until = now, now + validity
    local depth = 0
    if parent_id then
      -- FOR SHARE: a concurrent revocation of the parent waits for us.
      local parent = s:first("SELECT * FROM execution_mandates WHERE mandate_id = $1 FOR SHARE", parent_id)
      if not parent then refuse("parent_not_found", "Parent mandate %s not found", parent_id) end
      if parent.revoked then refuse("parent_revoked", "Parent mandate %s is revoked", parent_id) end
      if now < parent.valid_from then
        refuse("parent_not_yet_valid", "Parent mandate %s is not yet valid (starts at %s)",
               parent_id, parent.valid_from:naive())
      end
      if now > parent.valid_until then
        refuse("parent_expired", "Parent mandate %s is expired (expired at %s)", parent_id,
               parent.valid_until:naive())
      end
      ok, bad = M.is_subset(resource_scope, parent.resource_scope)
      if not ok then
        refuse("resource_scope_exceeds_parent",
               "Child resource scope must be subset of parent scope: %s is not in parent mandate %s",
               show(bad), parent_id)
      end
      ok, bad = M.is_subset(action_scope, parent.action_scope)
      if not ok then
        refuse("action_scope_exceeds_parent",
               "Child action scope must be subset of parent scope: %s is not in parent mandate %s",
               show(bad), parent_id)
      end
      if valid_from < parent.valid_from or valid_until > parent.valid_until then
        refuse("window_outside_parent",
               "Child mandate window %s to %s is not inside parent mandate %s window %s to %s",
               valid_from:naive(), valid_until:naive(), parent_id, parent.valid_from:naive(),
               parent.valid_until:naive())
      end
      depth = parent.delegation_depth + 1
      if depth > policy.max_delegation_depth then
        refuse("delegation_depth_exceeded", "Delegation depth %d exceeds policy limit %d", depth,
               policy.max_delegation_depth)
      end
      local delegator = M.get_active_policy(s, parent.subject_id)
      if not delegator or not delegator.allow_delegation then
        refuse("delegation_not_allowed",
               "Subject %s of parent mandate %s is not allowed to delegate (%s)", parent.subject_id,
               parent_id, delegator and "its authority policy does not allow delegation"
                                     or "it has no active authority policy")
      end
    end

    if not issuer.private_key_pem or issuer.private_key_pem == "" then
      refuse("issuer_has_no_key", "Issuer %s has no private key to sign the mandate with", issuer_id)
    end

    local fields = {
      mandate_id = core.uuid4(), issuer_id = issuer_id, subject_id = subject_id,
      valid_from = valid_from, valid_until = valid_until,
      resource_scope = resource_scope, action_scope = action_scope,
      created_at = now, mandate_metadata = req.metadata, revoked = false,
      parent_mandate_id = parent_id, delegation_depth = depth, intent_hash = intent_hash,
    }
    fields.signature = crypto.sign_mandate(fields, issuer.private_key_pem)
    local mandate = models.ExecutionMandate(fields)
    s:add(mandate)
    s:add(models.AuthorityLedgerEvent {
      event_type = "issued", timestamp = now, principal_id = subject_id,
      mandate_id = mandate.mandate_id,
      event_metadata = {
        issuer_id = issuer_id, validity_seconds = validity, delegation_depth = depth,
        parent_mandate_id = parent_id or core.null,
      },
    })
    s:flush()
    return mandate
  end)
end

---------------------------------------------------------------------------
-- Validating
---------------------------------------------------------------------------

-- Check the delegation chain above a mandate. Returns nil when sound, or
-- a reason and the code of the first broken link.
local function check_ancestors(s, mandate, now)
  local child, seen = mandate, { [mandate.mandate_id] = true }
  while child.parent_mandate_id do
    local pid = child.parent_mandate_id
    if seen[pid] then
      return string.format("Delegation chain invalid: mandate %s appears twice in its own chain", pid)
    end
    seen[pid] = true
    local parent = s:first("SELECT * FROM execution_mandates WHERE mandate_id = $1", pid)
    if not parent then
      return string.format("Delegation chain invalid: parent mandate %s not found", pid)
    end
    if parent.revoked then
      return string.format("Delegation chain invalid: ancestor mandate %s is revoked", pid)
    end
    if now < parent.valid_from or now > parent.valid_until then
      return string.format("Delegation chain invalid: ancestor mandate %s is not valid now " ..
                           "(valid %s to %s)", pid, parent.valid_from:naive(), parent.valid_until:naive())
    end
    if child.valid_from < parent.valid_from or child.valid_until > parent.valid_until then
      return string.format("Delegation chain invalid: the window of mandate %s is not inside " ..
                           "that of its parent %s", child.mandate_id, pid)
    end
    local ok, bad = M.is_subset(child.resource_scope, parent.resource_scope)
    if not ok then
      return string.format("Delegation chain invalid: ancestor mandate %s does not contain " ..
                           "resource %s of mandate %s", pid, show(bad), child.mandate_id)
    end
    ok, bad = M.is_subset(child.action_scope, parent.action_scope)
    if not ok then
      return string.format("Delegation chain invalid: ancestor mandate %s does not contain " ..
                           "action %s of mandate %s", pid, show(bad), child.mandate_id)
    end
    child = parent
  end
  return nil
end

--- Validate a mandate for one action on one resource, fail-closed.
--
-- Denied, in this order (reason_code in parentheses): no mandate
-- ("No mandate provided", AUTH_MANDATE_MISSING); revoked
-- (AUTH_MANDATE_REVOKED); now < valid_from (AUTH_MANDATE_NOT_YET_VALID);
-- now > valid_until (AUTH_MANDATE_EXPIRED), both bounds inclusive; issuer
-- missing (AUTH_ISSUER_NOT_FOUND) or without a public key
-- (AUTH_ISSUER_KEY_MISSING); bad signature, or an issuer key that cannot
-- be read (AUTH_SIGNATURE_INVALID); action out of scope
-- (AUTH_ACTION_SCOPE_DENIED); resource out of scope
-- (AUTH_RESOURCE_SCOPE_DENIED); for a delegated mandate, any ancestor
-- revoked, not valid now, with a window not containing its child's, or
-- not containing its child's scopes (AUTH_DELEGATION_PATH_INVALID).
--
-- Writes one authority event: `validated`/`allowed`, or
-- `denied`/`denied` with the reason, principal = the subject (see the
-- module notes for a missing mandate).
-- @param session
-- @tparam string mandate_id (nil or unknown: denied)
-- @tparam string action
-- @tparam string resource
-- @tparam[opt] table opts `now` (the instant to evaluate at, an Instant;
-- default the current time; the event is still stamped with the real
-- time and records `evaluated_at`),
-- `principal_id` (who asks: used for the event of a missing mandate),
-- `correlation_id`
-- @treturn table decision: `allowed`, `reason`, `reason_code`,
-- `mandate_id`, `principal_id`, `event_id` (nil when nothing was written)
function M.validate_mandate(session, mandate_id, action, resource, opts)
  if type(action) ~= "string" then
    error("bad argument #3 to 'validate_mandate' (string expected, got " .. type(action) .. ")", 2)
  end
  if type(resource) ~= "string" then
    error("bad argument #4 to 'validate_mandate' (string expected, got " .. type(resource) .. ")", 2)
  end
  opts = opts or {}
  local now = opts.now or core.utcnow()
  if not core.is_instant(now) then invalid("now", "opts.now must be an Instant") end
  local asker = opts.principal_id
  if asker ~= nil then asker = check_uuid(asker, "principal_id") end

  return session:session_scope(function(s)
    local mandate
    if mandate_id ~= nil and type(mandate_id) == "string" and core.is_uuid(mandate_id) then
      mandate = s:first("SELECT * FROM execution_mandates WHERE mandate_id = $1", mandate_id)
    end

    local function decide(allowed, code, reason)
      local decision = {
        allowed = allowed, reason = reason, reason_code = code,
        mandate_id = mandate and mandate.mandate_id or nil,
        principal_id = mandate and mandate.subject_id or asker,
        requested_action = action, requested_resource = resource,
      }
      if decision.principal_id then
        local ev = models.AuthorityLedgerEvent {
          event_type = allowed and "validated" or "denied",
          timestamp = core.utcnow(), -- when it was decided; `now` is what was evaluated
          principal_id = decision.principal_id,
          mandate_id = decision.mandate_id,
          decision = allowed and "allowed" or "denied",
          denial_reason = not allowed and clip(reason, 1000) or nil,
          requested_action = clip(action, 255),
          requested_resource = clip(resource, 1000),
          correlation_id = opts.correlation_id,
          event_metadata = {
            reason_code = code,
            requested_mandate_id = (not mandate and type(mandate_id) == "string") and clip(mandate_id, 100) or nil,
            evaluated_at = opts.now and now:naive() or nil,
          },
        }
        s:add(ev)
        s:flush()
        decision.event_id = ev.event_id
      end
      return decision
    end

    if not mandate then
      if mandate_id == nil then return decide(false, "AUTH_MANDATE_MISSING", "No mandate provided") end
      return decide(false, "AUTH_MANDATE_MISSING",
                    string.format("No mandate provided: mandate %s not found", clip(tostring(mandate_id), 100)))
    end
    local id = mandate.mandate_id
    if mandate.revoked then
      local reason = string.format("Mandate %s is revoked", id)
      if mandate.revocation_reason then reason = reason .. ": " .. mandate.revocation_reason end
      return decide(false, "AUTH_MANDATE_REVOKED", reason)
    end
    if now < mandate.valid_from then
      return decide(false, "AUTH_MANDATE_NOT_YET_VALID",
                    string.format("Mandate %s is not yet valid (starts at %s)", id, mandate.valid_from:naive()))
    end
    if now > mandate.valid_until then
      return decide(false, "AUTH_MANDATE_EXPIRED",
                    string.format("Mandate %s has expired (expired at %s)", id, mandate.valid_until:naive()))
    end
    local issuer = get_principal(s, mandate.issuer_id)
    if not issuer then
      return decide(false, "AUTH_ISSUER_NOT_FOUND", string.format("Issuer %s not found", mandate.issuer_id))
    end
    if not issuer.public_key_pem or issuer.public_key_pem == "" then
      return decide(false, "AUTH_ISSUER_KEY_MISSING",
                    string.format("Issuer %s has no public key", mandate.issuer_id))
    end
    local vok, good = pcall(crypto.verify_mandate, mandate, mandate.signature, issuer.public_key_pem)
    if not vok then
      return decide(false, "AUTH_SIGNATURE_INVALID",
                    string.format("Signature of mandate %s cannot be verified: the public key of issuer %s " ..
                                  "is not a valid ECDSA P-256 key", id, mandate.issuer_id))
    end
    if not good then
      return decide(false, "AUTH_SIGNATURE_INVALID", string.format("Invalid signature for mandate %s", id))
    end
    if not M.match_any(action, mandate.action_scope) then
      return decide(false, "AUTH_ACTION_SCOPE_DENIED",
                    string.format("Action %s is not in the action scope of mandate %s", show(action), id))
    end
    if not M.match_any(resource, mandate.resource_scope) then
      return decide(false, "AUTH_RESOURCE_SCOPE_DENIED",
                    string.format("Resource %s is not in the resource scope of mandate %s", show(resource), id))
    end
    local broken = check_ancestors(s, mandate, now)
    if broken then return decide(false, "AUTH_DELEGATION_PATH_INVALID", broken) end
    return decide(true, "AUTH_ALLOW",
                  string.format("Mandate %s allows %s on %s", id, show(action), show(resource)))
  end)
end

---------------------------------------------------------------------------
-- Revoking
---------------------------------------------------------------------------

--- Revoke a mandate (and, by default, every unrevoked descendant).
--
-- Allowed to the mandate's issuer, its subject, or a principal with an
-- active authority policy. Sets `revoked`, `revoked_at`,
-- `revocation_reason` and writes a `revoked` event (principal = the
-- revoker, the reason in `denial_reason`, metadata `{revoker_id,
-- revoked_at, cascade}`). Children are revoked with the reason
-- "Parent mandate <id> revoked: <reason>" (clipped to the column's 1000
-- characters), recursively, by the same revoker, in the same transaction:
-- authority over a mandate covers what was derived from it, so the
-- permission rule is checked once, for the mandate named.
-- @param session
-- @tparam string mandate_id
-- @tparam string revoker_id
-- @tparam string reason
-- @tparam[opt] table opts `cascade` (default true)
-- @treturn table `{mandate_id, revoked_at, revoked = {ids, the named one first}}`
-- @raise refused "mandate_not_found", "revoker_not_found",
-- "already_revoked", "not_permitted"
function M.revoke_mandate(session, mandate_id, revoker_id, reason, opts)
  mandate_id = check_uuid(mandate_id, "mandate_id")
  revoker_id = check_uuid(revoker_id, "revoker_id")
  if type(reason) ~= "string" or reason == "" then
    invalid("reason", "reason must be a non-empty string")
  end
  if (utf8.len(reason) or math.huge) > 1000 then
    invalid("reason", "reason must be valid UTF-8 of at most 1000 characters")
  end
  opts = opts or {}
  local cascade = opts.cascade ~= false

  return session:session_scope(function(s)
    local row = s:first("SELECT * FROM execution_mandates WHERE mandate_id = $1 FOR UPDATE", mandate_id)
    if not row then refuse("mandate_not_found", "Mandate %s not found", mandate_id) end
    if not get_principal(s, revoker_id) then refuse("revoker_not_found", "Revoker %s not found", revoker_id) end
    if row.revoked then refuse("already_revoked", "Mandate %s is already revoked", mandate_id) end
    if revoker_id ~= row.issuer_id and revoker_id ~= row.subject_id and not M.get_active_policy(s, revoker_id) then
      refuse("not_permitted",
             "Revoker %s does not have authority to revoke mandate %s: only the issuer, the subject, " ..
             "or a principal with an active authority policy can revoke a mandate", revoker_id, mandate_id)
    end

    local revoked, first_at = {}, nil
    local function revoke(m, why)
      local at = core.utcnow()
      first_at = first_at or at
      s:execute("UPDATE execution_mandates SET revoked = true, revoked_at = $2, revocation_reason = $3 " ..
                "WHERE mandate_id = $1", m.mandate_id, at, why)
      s:add(models.AuthorityLedgerEvent {
        event_type = "revoked", timestamp = at, principal_id = revoker_id, mandate_id = m.mandate_id,
        denial_reason = why,
        event_metadata = { revoker_id = revoker_id, revoked_at = at:naive(), cascade = cascade },
      })
      s:flush()
      revoked[#revoked + 1] = m.mandate_id
      if cascade then
        local children = s:execute(
          "SELECT * FROM execution_mandates WHERE parent_mandate_id = $1 AND NOT revoked " ..
          "ORDER BY created_at, mandate_id FOR UPDATE", m.mandate_id)
        for _, child in ipairs(children) do
          revoke(child, clip(string.format("Parent mandate %s revoked: %s", m.mandate_id, why), 1000))
        end
      end
    end
    revoke(row, reason)
    return { mandate_id = mandate_id, revoked_at = first_at, revoked = revoked }
  end)
end

return M
