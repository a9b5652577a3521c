-- Crypto primitives (src/crypto.c) and the interoperable signature
-- formats (caracal.crypto), checked against fixed vectors and against
-- Python's json and cryptography, as the original Caracal Core uses them.
local core = require "caracal.core"
local crypto = require "caracal.crypto"

-- A fixed test key (made with Python's cryptography for these specs only).
local PRIV = [[
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsGaEyZQiHousCKq6
Cax1Wv4Q2IXXg4pgeYK2qwiCQrWhRANCAATLU5Rf9xCfnFmDmVTrcynC77B+t93j
nFI5DekrUnL5JIzwa2t3FQ1jY8kSVGSNCX8jaA/21ygMtx+VkRnnaIt5
-----END PRIVATE KEY-----
]]
local PUB = [[
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEy1OUX/cQn5xZg5lU63Mpwu+wfrfd
45xSOQ3pK1Jy+SSM8GtrdxUNY2PJElRkjQl/I2gP9tcoDLcflZEZ52iLeQ==
-----END PUBLIC KEY-----
]]
-- The body of the private key: no error message may contain any of it.
local PRIV_BODY = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsGaEyZQiHousCKq6"

-- A fixed mandate, the JSON Python's json.dumps(sort_keys=True,
-- separators=(",", ":")) gives for it, and Python's signature of it.
local MANDATE = {
  mandate_id = "550E8400-E29B-41D4-A716-446655440000", -- normalised to lowercase
  issuer_id = "660e8400-e29b-41d4-a716-446655440000",
  subject_id = "770e8400-e29b-41d4-a716-446655440000",
  valid_from = core.Instant("2024-01-15T10:00:00Z"),
  valid_until = core.Instant("2024-01-15T11:00:00.000250Z"),
  resource_scope = { "api:openai:gpt-4", "db:caf\u{e9}/*" },
  action_scope = { "api_call", "read" },
  delegation_depth = 1,
  parent_mandate_id = "880e8400-e29b-41d4-a716-446655440000",
  intent_hash = nil,
}
local MANDATE_JSON = '{"action_scope":["api_call","read"],"delegation_depth":1,"intent_hash":null,' ..
  '"issuer_id":"660e8400-e29b-41d4-a716-446655440000","mandate_id":"550e8400-e29b-41d4-a716-446655440000",' ..
  '"parent_mandate_id":"880e8400-e29b-41d4-a716-446655440000","resource_scope":["api:openai:gpt-4",' ..
  '"db:caf\\u00e9/*"],"subject_id":"770e8400-e29b-41d4-a716-446655440000","valid_from":"2024-01-15T10:00:00",' ..
  '"valid_until":"2024-01-15T11:00:00.000250"}'
local PY_MANDATE_SIG = "30450220174f6198cd8ad51abcd325939248866c0c05b203992051b9e0d7f6eb6a0072b50221" ..
  "00998ceeb0e3e47c77f60ba70b5f6aea0598296e22cbd432167d36012b5d37824c"
-- Python: key.sign(sha256(b"root").digest(), ECDSA(SHA256())).hex()
local PY_ROOT_SIG = "3046022100b7ce263feb6b22522e3bad7ff709a91e1b7b106b6cd71a34b08aed4118db24d10221" ..
  "0081f919c6136f820df745d4264a57d4d402b1d13b793a73742e3783d9797f0293"

local function flip_hex(hex, pos)
  local c = hex:sub(pos, pos)
  local d = string.format("%x", tonumber(c, 16) ~ 1)
  return hex:sub(1, pos - 1) .. d .. hex:sub(pos + 1)
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc
end

local function tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

-- Run a Python script (text) with an input file; returns stdout.
local function python(script, input)
  local sp, ip = tmpfile(script), tmpfile(input or "")
  local out, rc = sh("python3 " .. sp .. " " .. ip)
  os.remove(sp)
  os.remove(ip)
  assert(rc == 0, out)
  return out
end

local has_python = select(2, sh("python3 -c 'import cryptography'")) == 0

describe("SHA-256", function()
  it("gives the FIPS 180-4 vectors, raw and as lowercase hex", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256_hex("abc"))
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", core.sha256_hex(""))
    assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                 core.sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
    assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
                 core.sha256_hex(string.rep("a", 1000000)))
    local raw = core.sha256("abc")
    assert.equal(32, #raw)
    assert.equal(core.sha256_hex("abc"), core.hex_encode(raw))
  end)

  it("hashes bytes, NUL included", function()
    assert.equal("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d", core.sha256_hex("\0"))
  end)

  it("hex_encode and hex_decode round-trip; bad hex is nil and a message", function()
    assert.equal("00ff10", core.hex_encode("\0\255\16"))
    assert.equal("\0\255\16", core.hex_decode("00FF10"))
    assert.equal("", core.hex_decode(""))
    local v, err = core.hex_decode("abc")
    assert.is_nil(v)
    assert.equal("hex_decode: odd number of hex digits", err)
    v, err = core.hex_decode("zz")
    assert.is_nil(v)
    assert.equal("hex_decode: not a hex digit", err)
  end)
end)

describe("ECDSA P-256 keys", function()
  it("generates PKCS#8 private and SubjectPublicKeyInfo public PEM", function()
    local priv, pub = core.ec_generate()
    assert.truthy(priv:match("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\n"))
    assert.truthy(priv:match("%-%-%-%-%-END PRIVATE KEY%-%-%-%-%-\n$"))
    assert.truthy(pub:match("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-\n"))
    assert.equal(pub, core.ec_public_from_private(priv))
    local priv2 = core.ec_generate()
    assert.not_equal(priv, priv2)
  end)

  it("derives the public key of the fixed key exactly", function()
    assert.equal(PUB, core.ec_public_from_private(PRIV))
  end)

  it("refuses malformed keys with a clear message that never quotes the key", function()
    local ok, err = pcall(core.ec_sign, "not a key", "m")
    assert.is_false(ok)
    assert.equal("ec_sign: invalid private key (expected an unencrypted PEM PKCS#8 ECDSA P-256 key)", err)
    -- A damaged private key: the message holds none of its text.
    local damaged = PRIV:gsub("Cax1[^\n]*\n", "")
    ok, err = pcall(core.ec_sign, damaged, "m")
    assert.is_false(ok)
    assert.is_nil(err:find(PRIV_BODY:sub(20, 40), 1, true))
    ok, err = pcall(core.ec_verify, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "m", "00")
    assert.is_false(ok)
    assert.equal('ec_verify: invalid public key (expected PEM SubjectPublicKeyInfo, "BEGIN PUBLIC KEY", ' ..
                 'of an ECDSA P-256 key)', err)
    ok, err = pcall(core.ec_verify, PRIV, "m", "00")
    assert.is_false(ok)
    assert.equal("ec_verify: a private key was given where a public key (PEM SubjectPublicKeyInfo) is expected", err)
    assert.is_nil(err:find(PRIV_BODY, 1, true))
    ok, err = pcall(core.ec_public_from_private, PUB)
    assert.is_false(ok)
    assert.equal("ec_public_from_private: invalid private key (expected an unencrypted PEM PKCS#8 " ..
                 "ECDSA P-256 key)", err)
  end)

  it("refuses keys of another curve or type, naming what they are", function()
    local out, rc = sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 2>/dev/null")
    assert.equal(0, rc)
    local ok, err = pcall(core.ec_sign, out, "m")
    assert.is_false(ok)
    assert.equal("ec_sign: the private key is an EC key on curve secp384r1, not an ECDSA P-256 key", err)
    out, rc = sh("openssl genpkey -algorithm ED25519 2>/dev/null")
    assert.equal(0, rc)
    ok, err = pcall(core.ec_sign, out, "m")
    assert.is_false(ok)
    assert.equal("ec_sign: the private key is of type ED25519, not an ECDSA P-256 key", err)
  end)

  it("refuses an encrypted private key without prompting for a passphrase", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(PRIV)
    f:close()
    local enc, rc = sh("openssl pkcs8 -topk8 -in " .. path .. " -passout pass:secret-pass </dev/null")
    os.remove(path)
    assert.equal(0, rc)
    assert.truthy(enc:find("BEGIN ENCRYPTED PRIVATE KEY", 1, true))
    local ok, err = pcall(core.ec_sign, enc, "m")
    assert.is_false(ok)
    assert.equal("ec_sign: the private key is encrypted; an unencrypted PEM PKCS#8 ECDSA P-256 key is expected", err)
  end)
end)

describe("ECDSA P-256 signatures", function()
  it("sign gives lowercase hex DER that verifies; any change fails", function()
    local sig = core.ec_sign(PRIV, "message")
    assert.truthy(sig:match("^30[0-9a-f]+$"))
    assert.is_true(#sig >= 16 and #sig <= 144)
    assert.is_true(core.ec_verify(PUB, "message", sig))
    assert.is_false(core.ec_verify(PUB, "messagE", sig))
    for _, pos in ipairs({ 1, 9, #sig // 2, #sig - 1, #sig }) do
      assert.is_false(core.ec_verify(PUB, "message", flip_hex(sig, pos)), "flipped hex digit " .. pos)
    end
    local _, other = core.ec_generate()
    assert.is_false(core.ec_verify(other, "message", sig))
  end)

  it("verify is false, never an error, for bad or non-hex signatures", function()
    local sig = core.ec_sign(PRIV, "m")
    for _, bad in ipairs({ "", "0", "zz", sig:sub(1, -3), sig .. "00", sig:sub(3), "30" .. string.rep("0", 140),
                            string.rep("ab", 2000), "g" .. sig:sub(2) }) do
      assert.is_false(core.ec_verify(PUB, "m", bad))
    end
    assert.is_true(core.ec_verify(PUB, "m", sig:upper())) -- hex digits in either case
  end)

  it("verifies a Merkle root signature made by Python's cryptography", function()
    local root = core.sha256("root")
    assert.is_true(crypto.verify_root(root, PY_ROOT_SIG, PUB))
    assert.is_true(crypto.verify_root(core.hex_encode(root), PY_ROOT_SIG, PUB))
    assert.is_false(crypto.verify_root(core.sha256("toor"), PY_ROOT_SIG, PUB))
    local mine = crypto.sign_root(root, PRIV)
    assert.is_true(core.ec_verify(PUB, root, mine))
  end)
end)

describe("the canonical mandate JSON", function()
  it("is byte for byte the fixed vector", function()
    assert.equal(MANDATE_JSON, crypto.canonical_mandate_json(MANDATE))
  end)

  it("emits nulls, the integer depth and arrays in stored order; keys are exactly the ten", function()
    local m = {}
    for k, v in pairs(MANDATE) do m[k] = v end
    m.parent_mandate_id, m.delegation_depth, m.intent_hash = nil, 0, "ab12"
    m.resource_scope = { "z", "a" }
    m.action_scope = core.json_array()
    m.extra = "ignored"
    local json = crypto.canonical_mandate_json(m)
    assert.truthy(json:find('"parent_mandate_id":null', 1, true))
    assert.truthy(json:find('"delegation_depth":0,', 1, true))
    assert.truthy(json:find('"intent_hash":"ab12"', 1, true))
    assert.truthy(json:find('"resource_scope":["z","a"]', 1, true))
    assert.truthy(json:find('"action_scope":[]', 1, true))
    assert.is_nil(json:find("extra", 1, true))
    local payload = core.json_decode(json)
    local keys = {}
    for k in pairs(payload) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "action_scope", "delegation_depth", "intent_hash", "issuer_id", "mandate_id",
                  "parent_mandate_id", "resource_scope", "subject_id", "valid_from", "valid_until" }, keys)
  end)

  it("writes timestamps naive, with .ffffff only when microseconds are non-zero", function()
    local m = {}
    for k, v in pairs(MANDATE) do m[k] = v end
    m.valid_from = core.Instant("2024-02-29T23:59:59.000001+00:00")
    m.valid_until = "2024-03-01T00:00:00"
    local json = crypto.canonical_mandate_json(m)
    assert.truthy(json:find('"valid_from":"2024-02-29T23:59:59.000001"', 1, true))
    assert.truthy(json:find('"valid_until":"2024-03-01T00:00:00"}', 1, true))
  end)

  it("agrees with core.json_encode(v, {ascii=true}) on small values", function()
    local payload = crypto.mandate_payload(MANDATE)
    assert.equal(core.json_encode(payload, { ascii = true }), crypto.canonical_json(payload))
  end)

  it("refuses a mandate with a bad field, naming it", function()
    local m = {}
    for k, v in pairs(MANDATE) do m[k] = v end
    m.issuer_id = "nope"
    local ok, err = pcall(crypto.canonical_mandate_json, m)
    assert.is_false(ok)
    assert.equal('mandate signature: issuer_id must be a UUID, got "nope"', err.message)
    m.issuer_id, m.delegation_depth = MANDATE.issuer_id, 1.5
    ok, err = pcall(crypto.canonical_mandate_json, m)
    assert.equal("mandate signature: delegation_depth must be an integer", err.message)
  end)

  it("matches Python's json.dumps for strings with non-ASCII, control characters and DEL", function()
    if not has_python then return pending("python3 with cryptography is not installed") end
    local strings = { "caf\u{e9}", "\u{1F600} emoji", "tab\there", "nl\ncr\rff\fbs\b", "quote\" back\\slash /",
                      "\1\31\127 ctl", "\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}", "", "*.(+[%$^" }
    local m = {}
    for k, v in pairs(MANDATE) do m[k] = v end
    m.resource_scope = strings
    m.action_scope = { "\u{e9}t\u{e9}" }
    m.intent_hash = "h\u{e9}"
    local ours = crypto.canonical_mandate_json(m)
    -- Python reads the payload (through our JSON, which it decodes) and
    -- dumps it the way the original signs it.
    local theirs = python([[
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
sys.stdout.write(json.dumps(d, sort_keys=True, separators=(",", ":")))
]], core.json_encode(crypto.mandate_payload(m)))
    assert.equal(theirs, ours)
  end)
end)

describe("mandate signatures", function()
  it("verify a signature the original (Python) made for the fixed mandate", function()
    assert.is_true(crypto.verify_mandate(MANDATE, PY_MANDATE_SIG, PUB))
  end)

  it("sign and verify; a changed field or a flipped byte fails", function()
    local sig = crypto.sign_mandate(MANDATE, PRIV)
    assert.is_true(crypto.verify_mandate(MANDATE, sig, PUB))
    assert.is_false(crypto.verify_mandate(MANDATE, flip_hex(sig, 20), PUB))
    local m = {}
    for k, v in pairs(MANDATE) do m[k] = v end
    m.action_scope = { "api_call", "read", "write" }
    assert.is_false(crypto.verify_mandate(m, sig, PUB))
    m.action_scope = MANDATE.action_scope
    m.valid_until = MANDATE.valid_until + 0.000001
    assert.is_false(crypto.verify_mandate(m, sig, PUB))
    assert.is_false(crypto.verify_mandate(MANDATE, nil, PUB))
  end)

  it("signatures made here verify with Python's cryptography, as the original checks them", function()
    if not has_python then return pending("python3 with cryptography is not installed") end
    local sig = crypto.sign_mandate(MANDATE, PRIV)
    local input = crypto.canonical_json({ payload = crypto.mandate_payload(MANDATE), sig = sig, pub = PUB })
    local out = python([[
import json, sys, hashlib
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d = json.load(open(sys.argv[1], encoding="utf-8"))
canonical = json.dumps(d["payload"], sort_keys=True, separators=(",", ":"))
key = serialization.load_pem_public_key(d["pub"].encode())
try:
    key.verify(bytes.fromhex(d["sig"]), hashlib.sha256(canonical.encode()).digest(), ec.ECDSA(hashes.SHA256()))
    print("valid")
except Exception as e:
    print("invalid", e)
]], input)
    assert.equal("valid\n", out)
  end)
end)

describe("Merkle trees in C", function()
  local function leaves(n)
    local out = {}
    for i = 1, n do out[i] = core.sha256("leaf " .. i) end
    return out
  end

  it("agree with the original's algorithm (Python) for 1 to 9 leaves", function()
    if not has_python then return pending("python3 is not installed") end
    local expected = python([[
import hashlib
h = lambda b: hashlib.sha256(b).digest()
for n in range(1, 10):
    level = [h(("leaf %d" % i).encode()) for i in range(1, n + 1)]
    while len(level) > 1:
        level = [h(level[i] + (level[i + 1] if i + 1 < len(level) else level[i])) for i in range(0, len(level), 2)]
    print(level[0].hex())
]])
    local ours = {}
    for n = 1, 9 do ours[n] = core.hex_encode(core.merkle_root(leaves(n))) .. "\n" end
    assert.equal(expected, table.concat(ours))
  end)

  it("the root of one leaf is the leaf; proofs lead to the root for every index", function()
    local one = leaves(1)
    assert.equal(one[1], core.merkle_root(one))
    for n = 1, 17 do
      local ls = leaves(n)
      local root = core.merkle_root(ls)
      for i = 1, n do
        local r, sibs, sides = core.merkle_proof(ls, i)
        assert.equal(root, r)
        local h = ls[i]
        for k, s in ipairs(sibs) do
          h = sides[k] == "left" and core.sha256(s .. h) or core.sha256(h .. s)
        end
        assert.equal(root, h)
      end
    end
  end)

  it("refuses bad input with clear messages", function()
    local ok, err = pcall(core.merkle_root, {})
    assert.is_false(ok)
    assert.equal("merkle_root: no leaves (a Merkle tree needs at least one)", err)
    ok, err = pcall(core.merkle_root, { core.sha256("a"), "short" })
    assert.equal("merkle_root: leaf 2 is not a 32-byte hash (got string of length 5)", err)
    ok, err = pcall(core.merkle_proof, leaves(3), 4)
    assert.is_false(ok)
    assert.truthy(err:find("leaf index out of range", 1, true))
  end)

  it("merkle_leaf is SHA-256 of SHA-256", function()
    assert.equal(core.sha256(core.sha256("x")), core.merkle_leaf("x"))
  end)
end)
