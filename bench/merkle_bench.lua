-- Merkle throughput: event hashing, tree building, root signing checks and
-- proof verification over N in-memory ledger events (no database).
--
--    build/caracal bench/merkle_bench.lua [N] [BATCH]     (default 1000000, 1000)
--    lua5.4 bench/merkle_bench.lua [N] [BATCH]            (with package paths set)
--
-- Prints one line per phase with events/s, then a JSON summary line
-- (`{"bench":"merkle",...}`) for harnesses.
local args = arg or { ... }
local N = math.tointeger(tonumber(args[1] or "")) or 1000000
local BATCH = math.tointeger(tonumber(args[2] or "")) or 1000

local core = require "caracal.core"
local merkle = require "caracal.merkle"
local crypto = require "caracal.crypto"

local AGENTS = {}
for i = 1, 16 do AGENTS[i] = core.uuid4() end
local T0 = core.Instant("2024-01-01T00:00:00Z")
local QTY, COSTS = {}, {}
for i = 0, 999 do
  QTY[i] = core.Decimal(string.format("%d.000000", i + 1))
  COSTS[i] = core.Decimal(string.format("0.%06d", i * 37 + 1))
end

-- Rows of one batch, as the database layer decodes them.
local function make_batch(first, n)
  local rows = {}
  for k = 0, n - 1 do
    local id = first + k
    rows[k + 1] = {
      event_id = id, agent_id = AGENTS[id % 16 + 1], timestamp = T0 + (id * 0.001003),
      resource_type = "api.openai.gpt4", quantity = QTY[id % 1000], cost = COSTS[(id * 7) % 1000],
      currency = id % 5 == 0 and "EUR" or "USD",
    }
  end
  return rows
end

local clock = os.clock
local t_gen, t_hash, t_tree, t_verify, t_proof = 0, 0, 0, 0, 0
local priv, pub = crypto.generate_keypair()
local roots, sigs = {}, {}
local proofs_checked = 0

-- Pass 1: hash and build (as batching does), sign each root.
local nb = 0
for first = 1, N, BATCH do
  local n = math.min(BATCH, N - first + 1)
  local t = clock()
  local rows = make_batch(first, n)
  t_gen = t_gen + (clock() - t)
  t = clock()
  local leaves = merkle.leaves(rows)
  t_hash = t_hash + (clock() - t)
  t = clock()
  local root = core.merkle_root(leaves)
  t_tree = t_tree + (clock() - t)
  nb = nb + 1
  roots[nb] = root
  if nb <= 100 then sigs[nb] = crypto.sign_root(root, priv) end
end

-- Pass 2: verify (as merkle.verify does per batch): recompute and compare,
-- check signatures, and check one inclusion proof per batch.
nb = 0
local failures = 0
for first = 1, N, BATCH do
  local n = math.min(BATCH, N - first + 1)
  local t = clock()
  local rows = make_batch(first, n)
  t_gen = t_gen + (clock() - t)
  nb = nb + 1
  t = clock()
  local leaves = merkle.leaves(rows)
  if core.merkle_root(leaves) ~= roots[nb] then failures = failures + 1 end
  if sigs[nb] and not crypto.verify_root(roots[nb], sigs[nb], pub) then failures = failures + 1 end
  t_verify = t_verify + (clock() - t)
  t = clock()
  local i = (first % n) + 1
  local r, sibs, sides = core.merkle_proof(leaves, i)
  local siblings = {}
  for k, s in ipairs(sibs) do siblings[k] = { hash = core.hex_encode(s), side = sides[k] } end
  local ok = merkle.verify_proof({ leaf = core.hex_encode(leaves[i]), siblings = siblings, root = core.hex_encode(r),
                                   leaf_index = i - 1, event_count = n }, { event = rows[i] })
  if not ok then failures = failures + 1 end
  proofs_checked = proofs_checked + 1
  t_proof = t_proof + (clock() - t)
end

local function rate(n, secs) return secs > 0 and n / secs or math.huge end
local build = t_hash + t_tree
print(string.format("merkle bench: %d events in batches of %d (%d batches), CPU seconds", N, BATCH, nb))
print(string.format("  hash events (leaves)   %8.3f s  %12.0f events/s", t_hash, rate(N, t_hash)))
print(string.format("  build trees            %8.3f s  %12.0f events/s", t_tree, rate(N, t_tree)))
print(string.format("  hash + build           %8.3f s  %12.0f events/s", build, rate(N, build)))
print(string.format("  verify (recompute)     %8.3f s  %12.0f events/s", t_verify, rate(N, t_verify)))
print(string.format("  proofs (make + check)  %8.3f s  %12.0f proofs/s  (one per batch; making one rebuilds its tree)",
                    t_proof, rate(proofs_checked, t_proof)))
print(string.format("  (generating rows took  %8.3f s, not counted)", t_gen))
print(string.format('{"bench":"merkle","events":%d,"batch":%d,"build_events_per_s":%.0f,' ..
                    '"verify_events_per_s":%.0f,"proofs_per_s":%.0f,"failures":%d}',
                    N, BATCH, rate(N, build), rate(N, t_verify), rate(proofs_checked, t_proof), failures))
if failures > 0 then
  io.stderr:write(string.format("merkle bench: %d verification failures\n", failures))
  os.exit(1)
end
