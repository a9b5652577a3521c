-- Principals, policies and mandates against a real database (a fresh one
-- for this file, migrated to head): every refusal rule of domain.md, the
-- fail-closed validation order, revocation, and signatures that the
-- original (Python) accepts and makes.
local core = require "caracal.core"
local models = require "caracal.models"
local crypto = require "caracal.crypto"
local authority = require "caracal.authority"
local ledgerdb = require "ledgerdb"

describe("authority (database)", function()
  local h

  setup(function()
    h = ledgerdb.create("authority_spec")
  end)

  teardown(function()
    if h then h.close() end
  end)

  local n = 0
  local function name(prefix)
    n = n + 1
    return prefix .. "-" .. n
  end

  local function scope(fn) return h.manager:session_scope(fn) end

  local function count(tbl, where, ...)
    local args = table.pack(...)
    return scope(function(s)
      return s:scalar("SELECT count(*) AS n FROM " .. tbl .. (where and (" WHERE " .. where) or ""),
                      table.unpack(args, 1, args.n))
    end)
  end

  local function principal(extra)
    return scope(function(s)
      local spec = { name = name("p"), principal_type = "agent", owner = "ops@example.com" }
      for k, v in pairs(extra or {}) do spec[k] = v end
      return authority.add_principal(s, spec)
    end)
  end

  local function policy(p, extra)
    local fields = { max_validity_seconds = 3600, allowed_resource_patterns = { "api:*", "db:*" },
                     allowed_actions = { "read", "write", "call" }, created_by = "spec" }
    for k, v in pairs(extra or {}) do fields[k] = v end
    return scope(function(s) return authority.set_policy(s, p.principal_id, fields) end)
  end

  local function issue(req)
    return scope(function(s) return authority.issue_mandate(s, req) end)
  end

  local function validate(id, action, resource, opts)
    return scope(function(s) return authority.validate_mandate(s, id, action, resource, opts) end)
  end

  local function row(id)
    return scope(function(s) return s:first("SELECT * FROM execution_mandates WHERE mandate_id = $1", id) end)
  end

  local function event(id)
    return scope(function(s) return s:first("SELECT * FROM authority_ledger_events WHERE event_id = $1", id) end)
  end

  -- A mandate written directly (any window, any state), signed by priv.
  local function insert_mandate(f, priv)
    local m = {
      mandate_id = f.mandate_id or core.uuid4(), issuer_id = f.issuer_id, subject_id = f.subject_id,
      valid_from = f.valid_from, valid_until = f.valid_until,
      resource_scope = f.resource_scope or { "api:*" }, action_scope = f.action_scope or { "read" },
      delegation_depth = f.delegation_depth or 0, parent_mandate_id = f.parent_mandate_id,
      intent_hash = f.intent_hash, revoked = f.revoked or false, created_at = core.utcnow(),
    }
    m.signature = f.signature or crypto.sign_mandate(m, priv)
    scope(function(s)
      s:add(models.ExecutionMandate(m))
      s:flush()
    end)
    return m
  end

  -- Expect a refusal: rule and message, and nothing written.
  local function refused(rule, message, fn)
    local before_m, before_e = count("execution_mandates"), count("authority_ledger_events")
    local ok, err = pcall(fn)
    assert.is_false(ok, "expected a refusal: " .. rule)
    assert.is_true(core.is_error(err), tostring(err))
    assert.equal("refused", err.kind)
    assert.equal(rule, err.rule)
    if message then assert.equal(message, err.message) end
    assert.equal(before_m, count("execution_mandates"))
    assert.equal(before_e, count("authority_ledger_events"))
    return err
  end

  describe("principals and policies", function()
    it("add_principal stores a P-256 key pair and never prints it", function()
      local p = principal({ metadata = { team = "x" } })
      local r = scope(function(s) return s:first("SELECT * FROM principals WHERE principal_id = $1", p.principal_id) end)
      assert.truthy(r.private_key_pem:find("BEGIN PRIVATE KEY", 1, true))
      assert.equal(r.public_key_pem, core.ec_public_from_private(r.private_key_pem))
      assert.same({ team = "x" }, r.metadata)
      assert.is_nil(tostring(p):find("PRIVATE", 1, true))
      local other = principal()
      local ok, err = pcall(principal, { private_key_pem = other.private_key_pem, public_key_pem = p.public_key_pem })
      assert.is_false(ok)
      assert.equal("add_principal: public_key_pem is not the public key of private_key_pem", err.message)
      local bare = principal({ generate_keys = false })
      assert.is_nil(bare.public_key_pem)
      assert.is_nil(bare.private_key_pem)
    end)

    it("set_policy deactivates the previous active policy in the same transaction", function()
      local p = principal()
      local first = policy(p)
      local second = policy(p, { max_validity_seconds = 60 })
      local rows = scope(function(s)
        return s:execute("SELECT policy_id, active, max_validity_seconds FROM authority_policies " ..
                         "WHERE principal_id = $1 ORDER BY created_at", p.principal_id)
      end)
      assert.equal(2, #rows)
      assert.equal(first.policy_id, rows[1].policy_id)
      assert.is_false(rows[1].active)
      assert.equal(second.policy_id, rows[2].policy_id)
      assert.is_true(rows[2].active)
      assert.equal(60, scope(function(s) return authority.get_active_policy(s, p.principal_id) end).max_validity_seconds)
    end)

    it("set_policy refuses an unknown principal and writes nothing", function()
      local id = core.uuid4()
      local before = count("authority_policies")
      local ok, err = pcall(policy, { principal_id = id })
      assert.is_false(ok)
      assert.equal("principal_not_found", err.rule)
      assert.equal("Principal " .. id .. " not found", err.message)
      assert.equal(before, count("authority_policies"))
    end)
  end)

  describe("issuing", function()
    local issuer, subject

    before_each(function()
      issuer, subject = principal({ principal_type = "user" }), principal()
      policy(issuer, { max_delegation_depth = 2 })
    end)

    it("writes the signed row, persists metadata and the issued event in one transaction", function()
      local t0 = core.utcnow()
      local m = issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:openai:*", "db:caf\u{e9}" }, action_scope = { "call" },
                        validity_seconds = 600, intent_hash = core.sha256_hex("intent"),
                        metadata = { purpose = "spec", n = 1 } })
      local r = row(m.mandate_id)
      assert.equal(issuer.principal_id, r.issuer_id)
      assert.equal(subject.principal_id, r.subject_id)
      assert.is_true(r.valid_from >= t0 and r.valid_from <= core.utcnow())
      assert.equal(600.0, r.valid_until - r.valid_from)
      assert.same({ "api:openai:*", "db:caf\u{e9}" }, r.resource_scope)
      assert.same({ "call" }, r.action_scope)
      assert.equal(0, r.delegation_depth)
      assert.is_false(r.revoked)
      assert.is_nil(r.parent_mandate_id)
      assert.equal(core.sha256_hex("intent"), r.intent_hash)
      assert.same({ purpose = "spec", n = 1 }, r.metadata)
      assert.truthy(r.signature:match("^30[0-9a-f]+$"))
      -- The stored row verifies with the issuer's public key, rebuilt from the row.
      assert.is_true(crypto.verify_mandate(r, r.signature, issuer.public_key_pem))
      local e = scope(function(s)
        return s:first("SELECT * FROM authority_ledger_events WHERE mandate_id = $1", m.mandate_id)
      end)
      assert.equal("issued", e.event_type)
      assert.equal(subject.principal_id, e.principal_id)
      assert.same({ issuer_id = issuer.principal_id, validity_seconds = 600, delegation_depth = 0,
                    parent_mandate_id = core.null }, e.event_metadata)
    end)

    it("refuses an issuer without an active policy", function()
      local other = principal()
      refused("no_active_policy", "Issuer " .. other.principal_id .. " does not have an active authority policy",
              function()
                issue({ issuer_id = other.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:x" }, action_scope = { "read" }, validity_seconds = 60 })
              end)
    end)

    it("refuses a validity over the policy's maximum", function()
      refused("validity_exceeds_policy", "Requested validity 3601s exceeds policy limit 3600s", function()
        issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                resource_scope = { "api:x" }, action_scope = { "read" }, validity_seconds = 3601 })
      end)
    end)

    it("refuses scopes that are not subsets of the policy's patterns", function()
      refused("resource_scope_exceeds_policy",
              'Requested resource scope exceeds policy limits: "files:x" matches no allowed resource pattern',
              function()
                issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:x", "files:x" }, action_scope = { "read" }, validity_seconds = 60 })
              end)
      refused("resource_scope_exceeds_policy", nil, function()
        issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                resource_scope = { "*" }, action_scope = { "read" }, validity_seconds = 60 })
      end)
      refused("action_scope_exceeds_policy",
              'Requested action scope exceeds policy limits: "delete" matches no allowed action', function()
                issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:x" }, action_scope = { "read", "delete" }, validity_seconds = 60 })
              end)
    end)

    it("refuses unknown issuers and subjects, and an issuer without a private key", function()
      local ghost = core.uuid4()
      refused("issuer_not_found", "Issuer " .. ghost .. " not found", function()
        issue({ issuer_id = ghost, subject_id = subject.principal_id, resource_scope = {}, action_scope = {},
                validity_seconds = 1 })
      end)
      refused("subject_not_found", "Subject " .. ghost .. " not found", function()
        issue({ issuer_id = issuer.principal_id, subject_id = ghost, resource_scope = {}, action_scope = {},
                validity_seconds = 1 })
      end)
      local keyless = principal({ generate_keys = false })
      policy(keyless)
      refused("issuer_has_no_key", "Issuer " .. keyless.principal_id .. " has no private key to sign the mandate with",
              function()
                issue({ issuer_id = keyless.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:x" }, action_scope = { "read" }, validity_seconds = 60 })
              end)
    end)

    it("refuses bad arguments with validation errors naming the field", function()
      local ok, err = pcall(issue, { issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                                     resource_scope = { "api:x" }, action_scope = { "read" }, validity_seconds = 0 })
      assert.is_false(ok)
      assert.equal("validation", err.kind)
      assert.equal("validity_seconds must be a positive number of seconds, got 0", err.message)
      ok, err = pcall(issue, { issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                               resource_scope = "api:x", action_scope = { "read" }, validity_seconds = 1 })
      assert.equal("resource_scope must be an array of strings, got string", err.message)
    end)

    describe("with a parent mandate", function()
      local delegate, child_subject, parent

      before_each(function()
        -- The parent's subject may delegate and issues the child.
        delegate, child_subject = principal(), principal()
        policy(delegate, { allow_delegation = true, max_delegation_depth = 2 })
        parent = issue({ issuer_id = issuer.principal_id, subject_id = delegate.principal_id,
                         resource_scope = { "api:openai:*" }, action_scope = { "call", "read" },
                         validity_seconds = 1800 })
      end)

      local function child(extra)
        local req = { issuer_id = delegate.principal_id, subject_id = child_subject.principal_id,
                      resource_scope = { "api:openai:gpt-4" }, action_scope = { "call" }, validity_seconds = 600,
                      parent_mandate_id = parent.mandate_id }
        for k, v in pairs(extra or {}) do req[k] = v end
        return issue(req)
      end

      it("issues a child at parent depth + 1 inside the parent's window", function()
        local c = child()
        local r, p = row(c.mandate_id), row(parent.mandate_id)
        assert.equal(1, r.delegation_depth)
        assert.equal(parent.mandate_id, r.parent_mandate_id)
        assert.is_true(r.valid_from >= p.valid_from and r.valid_until <= p.valid_until)
        assert.is_true(crypto.verify_mandate(r, r.signature, delegate.public_key_pem))
        assert.is_true(validate(c.mandate_id, "call", "api:openai:gpt-4").allowed)
      end)

      it("refuses a missing, revoked, expired or not yet valid parent", function()
        local ghost = core.uuid4()
        refused("parent_not_found", "Parent mandate " .. ghost .. " not found", function()
          child({ parent_mandate_id = ghost })
        end)
        local now = core.utcnow()
        local expired = insert_mandate({ issuer_id = issuer.principal_id, subject_id = delegate.principal_id,
                                         valid_from = now - 7200, valid_until = now - 3600 }, issuer.private_key_pem)
        refused("parent_expired", string.format("Parent mandate %s is expired (expired at %s)", expired.mandate_id,
                                                expired.valid_until:naive()), function()
          child({ parent_mandate_id = expired.mandate_id })
        end)
        local future = insert_mandate({ issuer_id = issuer.principal_id, subject_id = delegate.principal_id,
                                        valid_from = now + 3600, valid_until = now + 7200 }, issuer.private_key_pem)
        refused("parent_not_yet_valid", string.format("Parent mandate %s is not yet valid (starts at %s)",
                                                      future.mandate_id, future.valid_from:naive()), function()
          child({ parent_mandate_id = future.mandate_id })
        end)
        local revoked = insert_mandate({ issuer_id = issuer.principal_id, subject_id = delegate.principal_id,
                                         valid_from = now - 10, valid_until = now + 600, revoked = true },
                                       issuer.private_key_pem)
        refused("parent_revoked", "Parent mandate " .. revoked.mandate_id .. " is revoked", function()
          child({ parent_mandate_id = revoked.mandate_id })
        end)
      end)

      it("refuses child scopes that are not subsets of the parent's", function()
        refused("resource_scope_exceeds_parent",
                'Child resource scope must be subset of parent scope: "api:anthropic" is not in parent mandate ' ..
                parent.mandate_id, function() child({ resource_scope = { "api:anthropic" } }) end)
        refused("action_scope_exceeds_parent",
                'Child action scope must be subset of parent scope: "write" is not in parent mandate ' ..
                parent.mandate_id, function() child({ action_scope = { "write" } }) end)
      end)

      it("refuses a child window reaching past the parent's", function()
        local err = refused("window_outside_parent", nil, function() child({ validity_seconds = 1900 }) end)
        assert.truthy(err.message:find("is not inside parent mandate " .. parent.mandate_id .. " window", 1, true))
      end)

      it("refuses a depth beyond the issuer policy's max_delegation_depth", function()
        policy(delegate, { allow_delegation = true, max_delegation_depth = 0 })
        refused("delegation_depth_exceeded", "Delegation depth 1 exceeds policy limit 0", function() child() end)
      end)

      it("refuses when the parent's subject may not delegate", function()
        policy(delegate, { allow_delegation = false, max_delegation_depth = 2 })
        refused("delegation_not_allowed", string.format(
          "Subject %s of parent mandate %s is not allowed to delegate (its authority policy does not allow " ..
          "delegation)", delegate.principal_id, parent.mandate_id), function() child() end)
        -- The issuer may differ from the parent's subject: the subject's policy is what counts.
        local third = principal()
        policy(third, { max_delegation_depth = 2 })
        local nopolicy = principal()
        local p2 = issue({ issuer_id = issuer.principal_id, subject_id = nopolicy.principal_id,
                           resource_scope = { "api:openai:*" }, action_scope = { "call" }, validity_seconds = 1800 })
        refused("delegation_not_allowed", string.format(
          "Subject %s of parent mandate %s is not allowed to delegate (it has no active authority policy)",
          nopolicy.principal_id, p2.mandate_id), function()
            child({ issuer_id = third.principal_id, parent_mandate_id = p2.mandate_id })
          end)
      end)
    end)
  end)

  describe("validating", function()
    local issuer, subject, m

    before_each(function()
      issuer, subject = principal({ principal_type = "service" }), principal()
      policy(issuer, { max_delegation_depth = 3 })
      m = issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                  resource_scope = { "api:openai:*" }, action_scope = { "call" }, validity_seconds = 600 })
    end)

    local function expect(decision, allowed, code, reason)
      assert.equal(allowed, decision.allowed)
      assert.equal(code, decision.reason_code)
      assert.equal(reason, decision.reason)
      local e = event(decision.event_id)
      assert.equal(allowed and "validated" or "denied", e.event_type)
      assert.equal(allowed and "allowed" or "denied", e.decision)
      assert.equal(subject.principal_id, e.principal_id)
      assert.equal(decision.mandate_id, e.mandate_id)
      if allowed then assert.is_nil(e.denial_reason) else assert.equal(reason, e.denial_reason) end
      assert.equal(decision.requested_action, e.requested_action)
      assert.equal(decision.requested_resource, e.requested_resource)
      assert.equal(code, e.event_metadata.reason_code)
    end

    it("allows an action and resource in scope, writing a validated event", function()
      local d = validate(m.mandate_id, "call", "api:openai:gpt-4")
      expect(d, true, "AUTH_ALLOW", string.format('Mandate %s allows "call" on "api:openai:gpt-4"', m.mandate_id))
    end)

    it("denies a missing mandate: no event unless the asker is named", function()
      local before = count("authority_ledger_events")
      local d = validate(nil, "call", "api:openai:gpt-4")
      assert.is_false(d.allowed)
      assert.equal("No mandate provided", d.reason)
      assert.is_nil(d.event_id)
      local ghost = core.uuid4()
      d = validate(ghost, "call", "api:x")
      assert.equal("No mandate provided: mandate " .. ghost .. " not found", d.reason)
      assert.equal(before, count("authority_ledger_events"))
      d = validate(nil, "call", "api:x", { principal_id = subject.principal_id })
      local e = event(d.event_id)
      assert.equal("denied", e.event_type)
      assert.equal(subject.principal_id, e.principal_id)
      assert.is_nil(e.mandate_id)
      assert.equal("No mandate provided", e.denial_reason)
    end)

    it("checks the window with inclusive bounds", function()
      local r = row(m.mandate_id)
      local first = validate(m.mandate_id, "call", "api:openai:x", { now = r.valid_from })
      expect(first, true, "AUTH_ALLOW", string.format('Mandate %s allows "call" on "api:openai:x"', m.mandate_id))
      -- The event is stamped when decided and records the instant evaluated.
      local e = event(first.event_id)
      assert.equal(r.valid_from:naive(), e.event_metadata.evaluated_at)
      assert.is_true(e.timestamp > r.valid_from)
      expect(validate(m.mandate_id, "call", "api:openai:x", { now = r.valid_until }), true, "AUTH_ALLOW",
             string.format('Mandate %s allows "call" on "api:openai:x"', m.mandate_id))
      expect(validate(m.mandate_id, "call", "api:openai:x", { now = r.valid_from - 0.000001 }), false,
             "AUTH_MANDATE_NOT_YET_VALID",
             string.format("Mandate %s is not yet valid (starts at %s)", m.mandate_id, r.valid_from:naive()))
      expect(validate(m.mandate_id, "call", "api:openai:x", { now = r.valid_until + 0.000001 }), false,
             "AUTH_MANDATE_EXPIRED",
             string.format("Mandate %s has expired (expired at %s)", m.mandate_id, r.valid_until:naive()))
    end)

    it("denies a bad signature, a tampered row, and an issuer without a public key", function()
      local sig = row(m.mandate_id).signature
      local bad = sig:sub(1, 20) .. (sig:sub(21, 21) == "0" and "1" or "0") .. sig:sub(22)
      scope(function(s) s:execute("UPDATE execution_mandates SET signature = $2 WHERE mandate_id = $1", m.mandate_id, bad) end)
      expect(validate(m.mandate_id, "call", "api:openai:x"), false, "AUTH_SIGNATURE_INVALID",
             "Invalid signature for mandate " .. m.mandate_id)
      -- Widening the scope in the database breaks the signature.
      scope(function(s)
        s:execute("UPDATE execution_mandates SET signature = $2, resource_scope = $3 WHERE mandate_id = $1",
                  m.mandate_id, sig, core.json_array({ "*" }))
      end)
      expect(validate(m.mandate_id, "call", "files:secret"), false, "AUTH_SIGNATURE_INVALID",
             "Invalid signature for mandate " .. m.mandate_id)
      scope(function(s)
        s:execute("UPDATE principals SET public_key_pem = NULL WHERE principal_id = $1", issuer.principal_id)
      end)
      expect(validate(m.mandate_id, "call", "api:openai:x"), false, "AUTH_ISSUER_KEY_MISSING",
             "Issuer " .. issuer.principal_id .. " has no public key")
      scope(function(s)
        s:execute("UPDATE principals SET public_key_pem = 'garbage' WHERE principal_id = $1", issuer.principal_id)
      end)
      expect(validate(m.mandate_id, "call", "api:openai:x"), false, "AUTH_SIGNATURE_INVALID",
             string.format("Signature of mandate %s cannot be verified: the public key of issuer %s is not a " ..
                           "valid ECDSA P-256 key", m.mandate_id, issuer.principal_id))
    end)

    it("denies an action or resource out of scope, action first", function()
      expect(validate(m.mandate_id, "delete", "files:x"), false, "AUTH_ACTION_SCOPE_DENIED",
             string.format('Action "delete" is not in the action scope of mandate %s', m.mandate_id))
      expect(validate(m.mandate_id, "call", "api:anthropic"), false, "AUTH_RESOURCE_SCOPE_DENIED",
             string.format('Resource "api:anthropic" is not in the resource scope of mandate %s', m.mandate_id))
      -- Regex characters are literal: "." is not "any character".
      local dotted = issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                             resource_scope = { "db:users.v1" }, action_scope = { "read" }, validity_seconds = 60 })
      assert.is_false(validate(dotted.mandate_id, "read", "db:usersXv1").allowed)
      assert.is_true(validate(dotted.mandate_id, "read", "db:users.v1").allowed)
    end)

    it("denies a revoked mandate before anything else, with its reason", function()
      scope(function(s) authority.revoke_mandate(s, m.mandate_id, issuer.principal_id, "compromised") end)
      expect(validate(m.mandate_id, "delete", "nothing", { now = core.utcnow() + 86400 }), false,
             "AUTH_MANDATE_REVOKED", "Mandate " .. m.mandate_id .. " is revoked: compromised")
    end)

    describe("a delegated mandate", function()
      local delegate, child

      before_each(function()
        delegate = principal()
        policy(delegate, { allow_delegation = true, max_delegation_depth = 3 })
        local parent = issue({ issuer_id = issuer.principal_id, subject_id = delegate.principal_id,
                               resource_scope = { "api:openai:*" }, action_scope = { "call" },
                               validity_seconds = 3000 })
        child = issue({ issuer_id = delegate.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:openai:gpt-4" }, action_scope = { "call" }, validity_seconds = 600,
                        parent_mandate_id = parent.mandate_id })
        child.parent = parent
      end)

      it("is allowed while its chain is sound", function()
        assert.is_true(validate(child.mandate_id, "call", "api:openai:gpt-4").allowed)
      end)

      it("is denied when an ancestor is revoked", function()
        scope(function(s)
          s:execute("UPDATE execution_mandates SET revoked = true WHERE mandate_id = $1", child.parent.mandate_id)
        end)
        expect(validate(child.mandate_id, "call", "api:openai:gpt-4"), false, "AUTH_DELEGATION_PATH_INVALID",
               "Delegation chain invalid: ancestor mandate " .. child.parent.mandate_id .. " is revoked")
      end)

      it("is denied when an ancestor is not valid now or no longer contains the child", function()
        local p = row(child.parent.mandate_id)
        scope(function(s)
          s:execute("UPDATE execution_mandates SET valid_until = $2 WHERE mandate_id = $1", p.mandate_id,
                    p.valid_from + 1)
        end)
        local now = row(child.mandate_id).valid_from + 5
        expect(validate(child.mandate_id, "call", "api:openai:gpt-4", { now = now }), false,
               "AUTH_DELEGATION_PATH_INVALID",
               string.format("Delegation chain invalid: ancestor mandate %s is not valid now (valid %s to %s)",
                             p.mandate_id, p.valid_from:naive(), (p.valid_from + 1):naive()))
        scope(function(s)
          s:execute("UPDATE execution_mandates SET valid_until = $2, resource_scope = $3 WHERE mandate_id = $1",
                    p.mandate_id, p.valid_until, core.json_array({ "api:anthropic:*" }))
        end)
        expect(validate(child.mandate_id, "call", "api:openai:gpt-4"), false, "AUTH_DELEGATION_PATH_INVALID",
               string.format('Delegation chain invalid: ancestor mandate %s does not contain resource ' ..
                             '"api:openai:gpt-4" of mandate %s', p.mandate_id, child.mandate_id))
      end)
    end)
  end)

  describe("revoking", function()
    local issuer, subject, stranger

    before_each(function()
      issuer, subject, stranger = principal(), principal(), principal()
      policy(issuer, { max_delegation_depth = 3 })
    end)

    local function mandate(extra)
      local req = { issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                    resource_scope = { "api:*" }, action_scope = { "call" }, validity_seconds = 900 }
      for k, v in pairs(extra or {}) do req[k] = v end
      return issue(req)
    end

    local function revoke(id, who, reason, opts)
      return scope(function(s) return authority.revoke_mandate(s, id, who, reason, opts) end)
    end

    it("sets the row, writes the revoked event; revoking twice is an error", function()
      local m = mandate()
      local res = revoke(m.mandate_id, subject.principal_id, "no longer needed")
      local r = row(m.mandate_id)
      assert.is_true(r.revoked)
      assert.equal("no longer needed", r.revocation_reason)
      assert.equal(res.revoked_at, r.revoked_at)
      assert.same({ m.mandate_id }, res.revoked)
      local e = scope(function(s)
        return s:first("SELECT * FROM authority_ledger_events WHERE mandate_id = $1 AND event_type = 'revoked'",
                       m.mandate_id)
      end)
      assert.equal(subject.principal_id, e.principal_id)
      assert.equal("no longer needed", e.denial_reason)
      assert.same({ revoker_id = subject.principal_id, revoked_at = r.revoked_at:naive(), cascade = true },
                  e.event_metadata)
      refused("already_revoked", "Mandate " .. m.mandate_id .. " is already revoked", function()
        revoke(m.mandate_id, issuer.principal_id, "again")
      end)
    end)

    it("allows the issuer, the subject or a principal with an active policy, and no one else", function()
      local m = mandate()
      refused("not_permitted", string.format(
        "Revoker %s does not have authority to revoke mandate %s: only the issuer, the subject, or a principal " ..
        "with an active authority policy can revoke a mandate", stranger.principal_id, m.mandate_id), function()
          revoke(m.mandate_id, stranger.principal_id, "I say so")
        end)
      assert.is_false(row(m.mandate_id).revoked)
      policy(stranger)
      revoke(m.mandate_id, stranger.principal_id, "admin")
      assert.is_true(row(m.mandate_id).revoked)
      local m2 = mandate()
      revoke(m2.mandate_id, issuer.principal_id, "issuer")
      assert.is_true(row(m2.mandate_id).revoked)
      local ghost = core.uuid4()
      refused("mandate_not_found", "Mandate " .. ghost .. " not found", function()
        revoke(ghost, issuer.principal_id, "x")
      end)
    end)

    it("cascades to unrevoked descendants with the parent's reason, or not when told", function()
      local d1, d2 = principal(), principal()
      policy(subject, { allow_delegation = true, max_delegation_depth = 3 })
      policy(d1, { allow_delegation = true, max_delegation_depth = 3 })
      local root = mandate()
      local child = issue({ issuer_id = subject.principal_id, subject_id = d1.principal_id,
                            resource_scope = { "api:x" }, action_scope = { "call" }, validity_seconds = 600,
                            parent_mandate_id = root.mandate_id })
      local grandchild = issue({ issuer_id = d1.principal_id, subject_id = d2.principal_id,
                                 resource_scope = { "api:x" }, action_scope = { "call" }, validity_seconds = 300,
                                 parent_mandate_id = child.mandate_id })
      local res = revoke(root.mandate_id, issuer.principal_id, "breach")
      assert.same({ root.mandate_id, child.mandate_id, grandchild.mandate_id }, res.revoked)
      assert.equal("breach", row(root.mandate_id).revocation_reason)
      assert.equal("Parent mandate " .. root.mandate_id .. " revoked: breach", row(child.mandate_id).revocation_reason)
      assert.equal("Parent mandate " .. child.mandate_id .. " revoked: Parent mandate " .. root.mandate_id ..
                   " revoked: breach", row(grandchild.mandate_id).revocation_reason)
      assert.equal(3, count("authority_ledger_events", "event_type = 'revoked' AND principal_id = $1 " ..
                            "AND mandate_id = ANY($2)", issuer.principal_id,
                            { root.mandate_id, child.mandate_id, grandchild.mandate_id }))

      local root2 = mandate()
      local child2 = issue({ issuer_id = subject.principal_id, subject_id = d1.principal_id,
                             resource_scope = { "api:x" }, action_scope = { "call" }, validity_seconds = 600,
                             parent_mandate_id = root2.mandate_id })
      res = revoke(root2.mandate_id, issuer.principal_id, "only this", { cascade = false })
      assert.same({ root2.mandate_id }, res.revoked)
      assert.is_false(row(child2.mandate_id).revoked)
      local e = scope(function(s)
        return s:first("SELECT event_metadata FROM authority_ledger_events WHERE mandate_id = $1 " ..
                       "AND event_type = 'revoked'", root2.mandate_id)
      end)
      assert.is_false(e.event_metadata.cascade)
      -- The child stays unrevoked, but validation sees its revoked ancestor.
      assert.equal("AUTH_DELEGATION_PATH_INVALID", validate(child2.mandate_id, "call", "api:x").reason_code)
    end)
  end)

  describe("interoperability with the original (Python)", function()
    it("a mandate issued here verifies in Python, rebuilt from the stored row", function()
      if not ledgerdb.has_python() then return pending("python3 with cryptography is not installed") end
      local issuer, subject = principal(), principal()
      policy(issuer)
      local m = issue({ issuer_id = issuer.principal_id, subject_id = subject.principal_id,
                        resource_scope = { "api:caf\u{e9}:*", "db:\u{1F600}" }, action_scope = { "read" },
                        validity_seconds = 123.456789 })
      -- The row as the original's SQLAlchemy model would read it.
      local r = scope(function(s)
        return s:first("SELECT mandate_id::text, issuer_id::text, subject_id::text, valid_from::text AS vf, " ..
                       "(valid_from AT TIME ZONE 'UTC')::text AS vf_utc, valid_until::text AS vu, " ..
                       "(valid_until AT TIME ZONE 'UTC')::text AS vu_utc, resource_scope::text AS rs, " ..
                       "action_scope::text AS acs, delegation_depth, signature, " ..
                       "pg_typeof(valid_from)::text AS ty FROM execution_mandates WHERE mandate_id = $1",
                       m.mandate_id)
      end)
      local naive_from = r.ty == "timestamp without time zone" and r.vf or r.vf_utc
      local naive_until = r.ty == "timestamp without time zone" and r.vu or r.vu_utc
      local out = ledgerdb.python([[
import json, sys, hashlib
from datetime import datetime
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d = json.load(open(sys.argv[1], encoding="utf-8"))
payload = {
    "mandate_id": d["mandate_id"], "issuer_id": d["issuer_id"], "subject_id": d["subject_id"],
    "valid_from": datetime.fromisoformat(d["vf"]).isoformat(),
    "valid_until": datetime.fromisoformat(d["vu"]).isoformat(),
    "resource_scope": json.loads(d["rs"]), "action_scope": json.loads(d["acs"]),
    "delegation_depth": d["delegation_depth"], "parent_mandate_id": None, "intent_hash": None,
}
canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
key = serialization.load_pem_public_key(d["pub"].encode())
try:
    key.verify(bytes.fromhex(d["sig"]), hashlib.sha256(canonical.encode()).digest(), ec.ECDSA(hashes.SHA256()))
    print("valid")
except Exception as e:
    print("invalid", e)
]], crypto.canonical_json({ mandate_id = r.mandate_id, issuer_id = r.issuer_id, subject_id = r.subject_id,
                       vf = naive_from, vu = naive_until, rs = r.rs, acs = r.acs,
                       delegation_depth = r.delegation_depth, sig = r.signature, pub = issuer.public_key_pem }))
      assert.equal("valid\n", out)
    end)

    it("a mandate signed by Python with a Python-made key validates here", function()
      if not ledgerdb.has_python() then return pending("python3 with cryptography is not installed") end
      -- The original's principal: a key pair made by Python, stored as PEM.
      local keys = core.json_decode(ledgerdb.python([[
import json
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
print(json.dumps({
  "private": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode(),
  "public": key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()}))
]]))
      local issuer = scope(function(s)
        return authority.add_principal(s, { name = name("py"), principal_type = "service", owner = "python",
                                            private_key_pem = keys.private })
      end)
      assert.equal(keys.public, issuer.public_key_pem)
      local subject = principal()
      -- The original's issue_mandate, reduced to its signing steps.
      local py = core.json_decode(ledgerdb.python([[
import json, sys, hashlib, uuid
from datetime import datetime, timedelta
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d = json.load(open(sys.argv[1], encoding="utf-8"))
key = serialization.load_pem_private_key(d["private"].encode(), password=None)
valid_from = datetime.utcnow() - timedelta(seconds=60)
payload = {
    "mandate_id": str(uuid.uuid4()), "issuer_id": d["issuer_id"], "subject_id": d["subject_id"],
    "valid_from": valid_from.isoformat(), "valid_until": (valid_from + timedelta(seconds=600)).isoformat(),
    "resource_scope": ["api:\u00e9*"], "action_scope": ["read"], "delegation_depth": 0,
    "parent_mandate_id": None, "intent_hash": "abc",
}
canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
sig = key.sign(hashlib.sha256(canonical.encode()).digest(), ec.ECDSA(hashes.SHA256())).hex()
print(json.dumps({"payload": payload, "signature": sig}))
]], crypto.canonical_json({ private = keys.private, issuer_id = issuer.principal_id,
                       subject_id = subject.principal_id })))
      local p = py.payload
      insert_mandate({ mandate_id = p.mandate_id, issuer_id = p.issuer_id, subject_id = p.subject_id,
                       valid_from = p.valid_from, valid_until = p.valid_until, resource_scope = p.resource_scope,
                       action_scope = p.action_scope, intent_hash = p.intent_hash, signature = py.signature })
      local d = validate(p.mandate_id, "read", "api:\u{e9}tat")
      assert.equal("AUTH_ALLOW", d.reason_code)
      assert.is_true(d.allowed)
      -- A signature made here with the Python-made key verifies too.
      local mine = crypto.sign_mandate(row(p.mandate_id), keys.private)
      assert.is_true(crypto.verify_mandate(row(p.mandate_id), mine, keys.public))
    end)
  end)
end)
