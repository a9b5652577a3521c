-- Merkle hashing and inclusion proofs (caracal.merkle), no database:
-- the event hash format of domain.md, the tree of the original, and
-- proofs that reject every corruption (reliability L6).
local core = require "caracal.core"
local merkle = require "caracal.merkle"

local AGENT = "0B9C1F3E-6B2A-4A3E-9D4E-1C2B3A4D5E6F" -- normalised to lowercase in the hash

local function event(id, extra)
  local e = {
    event_id = id, agent_id = AGENT, timestamp = core.Instant("2024-01-02T03:04:05Z"),
    resource_type = "api.openai.gpt4", quantity = core.Decimal("1000"), cost = "0.03", currency = "USD",
  }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function events(n)
  local out = {}
  for i = 1, n do
    out[i] = event(i, { cost = core.Decimal(string.format("%d.%02d", i // 100, i % 100)), timestamp = core.Instant(1700000000 + i) })
  end
  return out
end

-- A genuine proof for position i (1-based) of a batch.
local function proof_of(evs, i)
  local leaves = merkle.leaves(evs)
  local root, sibs, sides = core.merkle_proof(leaves, i)
  local siblings = {}
  for k, h in ipairs(sibs) do siblings[k] = { hash = core.hex_encode(h), side = sides[k] } end
  return { leaf = core.hex_encode(leaves[i]), siblings = siblings, root = core.hex_encode(root),
           leaf_index = i - 1, event_count = #evs }
end

local function copy(p)
  local q = {}
  for k, v in pairs(p) do q[k] = v end
  q.siblings = {}
  for k, s in ipairs(p.siblings) do q.siblings[k] = { hash = s.hash, side = s.side } end
  return q
end

-- Flip one bit of a hex hash.
local function flip_bit(hex, bit)
  local raw = core.hex_decode(hex)
  local byte = bit // 8 + 1
  raw = raw:sub(1, byte - 1) .. string.char(raw:byte(byte) ~ (1 << (bit % 8))) .. raw:sub(byte + 1)
  return core.hex_encode(raw)
end

describe("the event hash", function()
  it("hashes event_id|agent_id|timestamp|resource_type|quantity|cost|currency exactly", function()
    local e = event(42)
    assert.equal("42|0b9c1f3e-6b2a-4a3e-9d4e-1c2b3a4d5e6f|2024-01-02T03:04:05|api.openai.gpt4|" ..
                 "1000.000000|0.030000|USD", merkle.event_string(e))
    -- Fixed vectors computed with Python's hashlib from that string.
    assert.equal("d818389a6d2e0539b2a6dbd729be752f59901b797e068b5d44cb27234603a01b",
                 core.hex_encode(merkle.event_hash(e)))
    assert.equal("c8244f5202602d90e91e584d2b05ef296d34c2f60e528ad145bf882f64309aa3",
                 core.hex_encode(merkle.leaf(e)))
  end)

  it("writes microseconds only when non-zero, and always six decimals", function()
    local e = event(7, { timestamp = core.Instant("2024-01-02T03:04:05.00012Z"), quantity = "0",
                         cost = core.Decimal("12.5"), currency = "EUR" })
    assert.equal("7|0b9c1f3e-6b2a-4a3e-9d4e-1c2b3a4d5e6f|2024-01-02T03:04:05.000120|api.openai.gpt4|" ..
                 "0.000000|12.500000|EUR", merkle.event_string(e))
    -- NUMERIC(20,6) text as PostgreSQL sends it is kept as is.
    e = event(8, { quantity = core.Decimal("99999999999999.999999"), cost = core.Decimal("0.000001") })
    assert.truthy(merkle.event_string(e):find("|99999999999999.999999|0.000001|", 1, true))
  end)

  it("changes with every field", function()
    local base = merkle.leaf(event(1))
    for field, v in pairs({ event_id = 2, agent_id = "1b9c1f3e-6b2a-4a3e-9d4e-1c2b3a4d5e6f",
                            timestamp = core.Instant("2024-01-02T03:04:05.000001Z"), resource_type = "x",
                            quantity = "1000.000001", cost = "0.030001", currency = "EUR" }) do
      assert.not_equal(base, merkle.leaf(event(1, { [field] = v })), field)
    end
  end)
end)

describe("Merkle roots of events", function()
  it("match the original's tree over the event hashes", function()
    local evs = events(5)
    local h = core.sha256
    local level = {}
    for i, e in ipairs(evs) do level[i] = h(h(merkle.event_string(e))) end
    while #level > 1 do
      local up = {}
      for i = 1, #level, 2 do up[#up + 1] = h(level[i] .. (level[i + 1] or level[i])) end
      level = up
    end
    assert.equal(core.hex_encode(level[1]), merkle.root_hex(evs))
  end)
end)

describe("inclusion proofs (L6)", function()
  it("a genuine proof verifies for every position of batches of 1 to 12 events", function()
    for n = 1, 12 do
      local evs = events(n)
      for i = 1, n do
        local p = proof_of(evs, i)
        assert.is_true(merkle.verify_proof(p, { event = evs[i], root = merkle.root_hex(evs), event_count = n }))
        -- The original's proof shape (no position or size) verifies too.
        local q = copy(p)
        q.leaf_index, q.event_count = nil, nil
        assert.is_true(merkle.verify_proof(q))
      end
    end
  end)

  it("rejects every corrupted probe; only the genuine proof verifies", function()
    local other_root = merkle.root_hex(events(6))
    for _, n in ipairs({ 2, 3, 5, 8, 11 }) do
      local evs = events(n)
      local trusted = merkle.root_hex(evs)
      for i = 1, n do
        local genuine = proof_of(evs, i)
        local probes = {}
        local function probe(name, p) probes[#probes + 1] = { name = name, p = p } end
        for k = 1, #genuine.siblings do
          for _, bit in ipairs({ 0, 7, 128, 255 }) do
            local p = copy(genuine)
            p.siblings[k].hash = flip_bit(p.siblings[k].hash, bit)
            probe("bit " .. bit .. " of sibling " .. k, p)
          end
          local p = copy(genuine)
          p.siblings[k].side = p.siblings[k].side == "left" and "right" or "left"
          probe("wrong side of sibling " .. k, p)
          p = copy(genuine)
          p.siblings[k].side = "middle"
          probe("bad side word of sibling " .. k, p)
          p = copy(genuine)
          p.siblings[k].hash = p.siblings[k].hash:upper()
          probe("upper-case hex in sibling " .. k, p)
        end
        for _, bit in ipairs({ 0, 100, 255 }) do
          local p = copy(genuine)
          p.leaf = flip_bit(p.leaf, bit)
          probe("bit " .. bit .. " of the leaf", p)
          p = copy(genuine)
          p.root = flip_bit(p.root, bit)
          probe("bit " .. bit .. " of the root", p)
        end
        if #genuine.siblings > 0 then
          local p = copy(genuine)
          table.remove(p.siblings)
          probe("last element dropped", p)
          p = copy(genuine)
          table.remove(p.siblings, 1)
          probe("first element dropped", p)
          p = copy(genuine)
          p.siblings = {}
          probe("empty proof", p)
        end
        local p = copy(genuine)
        p.siblings[#p.siblings + 1] = { hash = core.sha256_hex("garbage"), side = "right" }
        probe("trailing garbage element", p)
        p = copy(genuine)
        table.insert(p.siblings, 1, { hash = core.sha256_hex("garbage"), side = "left" })
        probe("leading garbage element", p)
        p = copy(genuine)
        p.root = other_root
        probe("another batch's root", p)
        for _, idx in ipairs({ genuine.leaf_index - 1, genuine.leaf_index + 1 }) do
          p = copy(genuine)
          p.leaf_index = idx
          probe("index " .. idx, p)
        end
        for _, size in ipairs({ n * 2, n // 2 }) do
          p = copy(genuine)
          p.event_count = size
          probe("size " .. size, p)
        end
        p = copy(genuine)
        p.leaf_index = nil
        probe("index without size", p)

        for _, pr in ipairs(probes) do
          local ok = merkle.verify_proof(pr.p, { root = trusted, event = evs[i], event_count = n })
          assert.is_false(ok, string.format("n=%d i=%d: %s was accepted", n, i, pr.name))
        end
        assert.is_true(merkle.verify_proof(genuine, { root = trusted, event = evs[i], event_count = n }))
      end
    end
  end)

  it("rejects a proof for another event, and says why", function()
    local evs = events(4)
    local p = proof_of(evs, 2)
    local ok, why = merkle.verify_proof(p, { event = evs[3] })
    assert.is_false(ok)
    assert.equal("the leaf is not the hash of this event", why)
    p.root = merkle.root_hex(events(5))
    ok, why = merkle.verify_proof(p)
    assert.is_false(ok)
    assert.equal("the proof does not lead to the root", why)
    ok, why = merkle.verify_proof(proof_of(evs, 2), { root = merkle.root_hex(events(5)) })
    assert.equal("the proof's root is not the trusted root", why)
  end)

  it("an internal node cannot pass for a leaf with a shorter path", function()
    local evs = events(4)
    local leaves = merkle.leaves(evs)
    local node = core.sha256(leaves[1] .. leaves[2])        -- level 1, position 0
    local sib = core.sha256(leaves[3] .. leaves[4])
    local forged = { leaf = core.hex_encode(node), siblings = { { hash = core.hex_encode(sib), side = "right" } },
                     root = merkle.root_hex(evs) }
    -- Hashes do lead to the root, so the shape checks must catch it.
    assert.is_true(merkle.verify_proof(forged))
    forged.leaf_index, forged.event_count = 0, 4
    assert.is_false(merkle.verify_proof(forged))
    forged.leaf_index, forged.event_count = 0, 2
    assert.is_false(merkle.verify_proof(forged, { event_count = 4 }))
    forged.leaf_index, forged.event_count = nil, nil
    assert.is_false(merkle.verify_proof(forged, { event = evs[1] }))
  end)

  it("an odd last node must have itself as sibling", function()
    local evs = events(3)
    local p = proof_of(evs, 3)
    assert.equal(p.leaf, p.siblings[1].hash)
    assert.is_true(merkle.verify_proof(p))
  end)
end)
