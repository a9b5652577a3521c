--- Signatures in the original Caracal Core's interoperable formats.
--
-- The primitives are C on OpenSSL (`caracal.core`): `sha256`, `sha256_hex`,
-- `ec_generate`, `ec_public_from_private`, `ec_sign`, `ec_verify`. This
-- module adds the two signed objects of shared/spec/domain.md:
--
-- * a mandate: m = SHA-256(canonical JSON bytes), signature = ECDSA P-256
--   with SHA-256 over m (so the digest signed is SHA-256(m)), DER, hex;
-- * a Merkle root: ECDSA P-256 with SHA-256 over the 32 raw root bytes.
--
--    local crypto = require "caracal.crypto"
--    local priv, pub = crypto.generate_keypair()
--    local sig = crypto.sign_mandate(mandate, priv)
--    assert(crypto.verify_mandate(mandate, sig, pub))
--
-- Nothing here prints or puts key material into an error message.
-- @module caracal.crypto
local core = require "caracal.core"

local M = {}

M.sha256 = core.sha256
M.sha256_hex = core.sha256_hex
M.hex_encode = core.hex_encode
M.hex_decode = core.hex_decode

local function invalid(fmt, ...)
  error(core.Error { kind = "validation", message = string.format(fmt, ...) }, 0)
end

--- A new ECDSA P-256 key pair.
-- @treturn string private key, PEM PKCS#8 ("BEGIN PRIVATE KEY")
-- @treturn string public key, PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY")
function M.generate_keypair()
  return core.ec_generate()
end

--- The public key (PEM SubjectPublicKeyInfo) of a private key PEM.
function M.public_from_private(private_pem)
  return core.ec_public_from_private(private_pem)
end

local function uuid_text(v, field)
  if type(v) ~= "string" or not core.is_uuid(v) then
    invalid("mandate signature: %s must be a UUID, got %s", field,
            type(v) == "string" and string.format("%q", v:sub(1, 60)) or type(v))
  end
  return core.uuid(v) -- lowercase, hyphenated
end

local function naive(v, field)
  if type(v) == "string" then
    local ok, inst = pcall(core.Instant, v)
    if ok then return inst:naive() end
  elseif core.is_instant(v) then
    return v:naive()
  end
  invalid("mandate signature: %s must be an Instant or an ISO 8601 string, got %s", field, tostring(v))
end

local function string_array(v, field)
  if type(v) ~= "table" then invalid("mandate signature: %s must be an array of strings", field) end
  local n = #v
  local out = core.json_array()
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > n then
      invalid("mandate signature: %s must be an array of strings (key %s)", field, tostring(k))
    end
  end
  for i = 1, n do
    if type(v[i]) ~= "string" then
      invalid("mandate signature: %s[%d] must be a string, got %s", field, i, type(v[i]))
    end
    out[i] = v[i]
  end
  return out
end

local function optional_string(v, field, as_uuid)
  if v == nil or v == core.null then return core.null end
  if as_uuid then return uuid_text(v, field) end
  if type(v) ~= "string" then invalid("mandate signature: %s must be a string or null", field) end
  return v
end

--- The object that is signed for a mandate: exactly the ten keys of
-- domain.md "Signature of a mandate", with nulls as `core.null`.
-- @tparam table m a mandate (model object, row or plain table) with
-- `mandate_id`, `issuer_id`, `subject_id`, `valid_from`, `valid_until`
-- (Instants or ISO strings, taken as UTC), `resource_scope`,
-- `action_scope`, `delegation_depth`, and optional `parent_mandate_id`,
-- `intent_hash`
-- @treturn table
-- @raise caracal.Error (kind "validation") naming a missing or bad field
function M.mandate_payload(m)
  if type(m) ~= "table" then invalid("mandate signature: expected a mandate table, got %s", type(m)) end
  local depth = m.delegation_depth
  if depth == nil then depth = 0 end
  depth = math.tointeger(depth)
  if not depth then invalid("mandate signature: delegation_depth must be an integer") end
  return {
    mandate_id = uuid_text(m.mandate_id, "mandate_id"),
    issuer_id = uuid_text(m.issuer_id, "issuer_id"),
    subject_id = uuid_text(m.subject_id, "subject_id"),
    valid_from = naive(m.valid_from, "valid_from"),
    valid_until = naive(m.valid_until, "valid_until"),
    resource_scope = string_array(m.resource_scope, "resource_scope"),
    action_scope = string_array(m.action_scope, "action_scope"),
    delegation_depth = depth,
    parent_mandate_id = optional_string(m.parent_mandate_id, "parent_mandate_id", true),
    intent_hash = optional_string(m.intent_hash, "intent_hash"),
  }
end

---------------------------------------------------------------------------
-- Canonical JSON (Python's json.dumps(v, sort_keys=True, separators=(",", ":")))
---------------------------------------------------------------------------

-- core.json_encode with ascii = true writes what Python writes (sorted
-- keys by code point, no spaces, non-ASCII and DEL as lowercase \uXXXX,
-- surrogate pairs beyond the BMP) for everything but floats, whose
-- shortest forms differ (Python writes 100.0, C 100): refuse them.
local function refuse_floats(v, depth)
  if depth > 100 then invalid("canonical JSON: nested too deeply (or a cycle)") end
  if math.type(v) == "float" then invalid("canonical JSON: cannot encode a float") end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if type(k) ~= "string" and not (math.type(k) == "integer" and k >= 1 and k <= #v) then
        invalid("canonical JSON: an object key of type %s", type(k))
      end
      refuse_floats(x, depth + 1)
    end
  end
end

--- Encode a value as canonical JSON, byte for byte what Python's
-- `json.dumps(v, sort_keys=True, separators=(",", ":"))` gives (with its
-- default ensure_ascii: non-ASCII and DEL as lowercase \uXXXX). Values:
-- strings (valid UTF-8), integers, booleans, nil/`core.null`, tables
-- (arrays when marked with `core.json_array` or holding 1..n; objects with
-- string keys otherwise; an empty unmarked table is `{}`); Decimals and
-- Instants as their text. Floats are refused.
-- @param v
-- @treturn string
function M.canonical_json(v)
  refuse_floats(v, 0)
  local ok, text = pcall(core.json_encode, v, { ascii = true })
  if not ok then invalid("canonical JSON: %s", (tostring(text):gsub("^cannot encode as JSON: ", ""))) end
  return text
end

--- The exact bytes that are hashed and signed for a mandate: the payload
-- as canonical JSON (see `canonical_json`): sorted keys, no spaces,
-- non-ASCII as \uXXXX.
-- @tparam table m see `mandate_payload`
-- @treturn string
function M.canonical_mandate_json(m)
  return M.canonical_json(M.mandate_payload(m))
end

--- Sign a mandate with its issuer's private key.
-- @tparam table m see `mandate_payload`
-- @tparam string private_pem PEM PKCS#8 ECDSA P-256 private key
-- @treturn string lowercase hex DER signature
function M.sign_mandate(m, private_pem)
  local digest = core.sha256(M.canonical_mandate_json(m))
  return core.ec_sign(private_pem, digest)
end

--- Check a mandate's signature with its issuer's public key.
-- @tparam table m see `mandate_payload`
-- @tparam string signature_hex as stored
-- @tparam string public_pem PEM SubjectPublicKeyInfo
-- @treturn boolean false for a wrong, malformed or non-hex signature
-- @raise when the public key is not a valid P-256 PEM, or m lacks fields
function M.verify_mandate(m, signature_hex, public_pem)
  if type(signature_hex) ~= "string" then return false end
  local digest = core.sha256(M.canonical_mandate_json(m))
  return core.ec_verify(public_pem, digest, signature_hex)
end

local function root_bytes(root)
  if type(root) == "string" and #root == 32 then return root end
  if type(root) == "string" and #root == 64 and root:match("^[0-9a-f]+$") then
    return core.hex_decode(root)
  end
  invalid("Merkle root: expected 32 raw bytes or 64 lowercase hex digits")
end

--- Sign a Merkle root (ECDSA P-256 with SHA-256 over the 32 raw bytes).
-- @tparam string root 32 raw bytes or 64 lowercase hex digits
-- @tparam string private_pem
-- @treturn string lowercase hex DER signature
function M.sign_root(root, private_pem)
  return core.ec_sign(private_pem, root_bytes(root))
end

--- Check a Merkle root's signature.
-- @tparam string root 32 raw bytes or 64 lowercase hex digits
-- @treturn boolean
function M.verify_root(root, signature_hex, public_pem)
  if type(signature_hex) ~= "string" then return false end
  return core.ec_verify(public_pem, root_bytes(root), signature_hex)
end

--- Read a PEM key file. Errors name the path, never the content.
-- @tparam string path
-- @treturn string PEM text
function M.read_key_file(path)
  if type(path) ~= "string" then invalid("key file: expected a path, got %s", type(path)) end
  local f, err = io.open(path, "rb")
  if not f then invalid("cannot read key file: %s", tostring(err)) end
  local pem = f:read("a")
  f:close()
  if not pem or not pem:find("-----BEGIN ", 1, true) then
    invalid("key file %s holds no PEM key", path)
  end
  return pem
end

return M
