--- Merkle batches over `ledger_events`: batching, inclusion proofs and
-- verification, in the original Caracal Core's format
-- (shared/spec/domain.md "Ledger events and Merkle batches").
--
-- * Event hash: SHA-256 of `event_id|agent_id|timestamp|resource_type|quantity|cost|currency`
--   (timestamp naive UTC ISO, `.ffffff` only when non-zero; quantity and
--   cost with exactly six decimals).
-- * Leaf = SHA-256(event hash, 32 raw bytes); parent = SHA-256(left || right);
--   at a level with an odd count the last node pairs with itself.
-- * Root: 64 lowercase hex; signature: ECDSA P-256 with SHA-256 over the
--   32 raw root bytes, DER, lowercase hex.
--
-- The scheme is fixed by interoperability, so it has no RFC 6962 prefix
-- bytes. Leaves and nodes are still kept apart: a leaf is the hash of a
-- 32-byte value, a node the hash of 64 bytes, so no node can pass for a
-- leaf of a real event without a SHA-256 second preimage, and
-- `verify_proof` checks the proof's length and sides against the leaf
-- position and batch size.
--
-- **Signing key.** The Merkle signing key is a dedicated ECDSA P-256 key
-- kept outside the database: the batching task is given the private key
-- (`signer_private_pem`, or `signer_key_file`: a PEM file path) and
-- verification the public key. Keeping it out of the ledger's database
-- means whoever can rewrite ledger rows cannot re-sign the rewritten
-- history (reliability L8). The key is never logged or put in a message.
--
-- **What verify can name.** The schema stores one root per batch, not the
-- leaves, so a changed row shows as "batch B (events A..Z): root
-- mismatch" and the row itself cannot be told from the root alone. It is
-- named exactly when the batch was written with a digest file
-- (`digest_file`, one JSON line per batch with its event ids and leaf
-- hashes, kept outside the database): verify then compares leaf by leaf.
-- A deleted row is named when the batch's id range was dense (no unused
-- ids) at batch time; a row inside a batch's range that is not linked to
-- that batch (inserted late, or forged) is always named; overlapping
-- ranges name both batches; a batch missing from the database but present
-- in the digest is named.
-- @module caracal.merkle
local core = require "caracal.core"
local models = require "caracal.models"
local crypto = require "caracal.crypto"

local M = {}

M.DEFAULT_BATCH_SIZE = 1000

local function fail(kind, fmt, ...)
  error(core.Error { kind = kind, message = string.format(fmt, ...) }, 0)
end

---------------------------------------------------------------------------
-- Hashing (pure)
---------------------------------------------------------------------------

-- Exactly six decimals, as NUMERIC(20,6) prints.
local function six(v)
  local d = core.Decimal(v)
  if d:scale() ~= 6 then d = d:round(6) end
  return tostring(d)
end

local function naive(ts)
  if not core.is_instant(ts) then ts = core.Instant(ts) end
  return ts:naive()
end

--- The string whose SHA-256 is the event hash.
-- @tparam table e a ledger event (row or LedgerEvent object) with
-- `event_id`, `agent_id`, `timestamp`, `resource_type`, `quantity`, `cost`,
-- `currency`
-- @treturn string
function M.event_string(e)
  local id = math.tointeger(e.event_id)
  if not id then fail("validation", "event hash: event_id must be an integer, got %s", tostring(e.event_id)) end
  return id .. "|" .. core.uuid(e.agent_id) .. "|" .. naive(e.timestamp) .. "|" .. e.resource_type .. "|" ..
         six(e.quantity) .. "|" .. six(e.cost) .. "|" .. e.currency
end

--- The event hash: 32 raw bytes.
function M.event_hash(e)
  return core.sha256(M.event_string(e))
end

--- The leaf of an event: SHA-256(event hash), 32 raw bytes.
function M.leaf(e)
  return core.merkle_leaf(M.event_string(e))
end

--- Leaves of a list of events, in order.
function M.leaves(events)
  local out = {}
  for i, e in ipairs(events) do out[i] = core.merkle_leaf(M.event_string(e)) end
  return out
end

--- The root of a list of events (in event_id order), 64 lowercase hex.
function M.root_hex(events)
  return core.hex_encode(core.merkle_root(M.leaves(events)))
end

-- Levels above n leaves.
local function height(n)
  local h = 0
  while n > 1 do
    n = (n + 1) // 2
    h = h + 1
  end
  return h
end

local function is_hex64(s)
  return type(s) == "string" and #s == 64 and s:find("^[0-9a-f]+$") ~= nil
end

--- Check an inclusion proof (pure: no database).
--
-- A proof is `{leaf = hex, siblings = {{hash = hex, side = "left"|"right"}, ...},
-- root = hex}` (the original's leaf_hash, proof_hashes, proof_directions,
-- root_hash), optionally with `leaf_index` (0-based position in the
-- batch) and `event_count`. When those two are present, the number of
-- siblings must be the tree height for event_count, each side must be the
-- one the position implies, and a node paired with itself must have
-- itself as sibling: so a proof for another position or batch size fails.
-- @tparam table proof
-- @tparam[opt] table opts `event` (the ledger event: its leaf must be
-- proof.leaf), `root` (the trusted root, hex: proof.root must equal it),
-- `event_count` (trusted batch size: proof.event_count must equal it)
-- @treturn boolean
-- @treturn[opt] string why it failed
function M.verify_proof(proof, opts)
  opts = opts or {}
  if type(proof) ~= "table" then return false, "the proof is not a table" end
  if not is_hex64(proof.leaf) then return false, "leaf is not 64 lowercase hex digits" end
  if not is_hex64(proof.root) then return false, "root is not 64 lowercase hex digits" end
  local sibs = proof.siblings
  if type(sibs) ~= "table" then return false, "siblings is not a list" end
  local n = #sibs
  for k in pairs(sibs) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false, "siblings is not a list" end
  end
  if opts.root ~= nil and proof.root ~= opts.root then return false, "the proof's root is not the trusted root" end
  if opts.event ~= nil and core.hex_encode(M.leaf(opts.event)) ~= proof.leaf then
    return false, "the leaf is not the hash of this event"
  end
  local index, count = proof.leaf_index, proof.event_count
  if opts.event_count ~= nil then
    if count ~= opts.event_count then return false, "event_count is not the batch's" end
  end
  if (index == nil) ~= (count == nil) then return false, "leaf_index and event_count go together" end
  if index ~= nil then
    index, count = math.tointeger(index), math.tointeger(count)
    if not index or not count or count < 1 or index < 0 or index >= count then
      return false, "leaf_index is outside the batch"
    end
    if n ~= height(count) then
      return false, string.format("a batch of %d events needs %d siblings, the proof has %d", count, height(count), n)
    end
  end
  local h = core.hex_decode(proof.leaf)
  local at, m = index, count
  for k = 1, n do
    local sib = sibs[k]
    if type(sib) ~= "table" or not is_hex64(sib.hash) then
      return false, string.format("sibling %d is not 64 lowercase hex digits", k)
    end
    if sib.side ~= "left" and sib.side ~= "right" then
      return false, string.format("sibling %d has side %s (left or right expected)", k, tostring(sib.side))
    end
    local s = core.hex_decode(sib.hash)
    if at then
      local want = at % 2 == 0 and "right" or "left"
      if sib.side ~= want then return false, string.format("sibling %d is on the wrong side", k) end
      if at % 2 == 0 and at == m - 1 and s ~= h then
        return false, string.format("sibling %d must repeat the node (odd level)", k)
      end
      at, m = at // 2, (m + 1) // 2
    end
    if sib.side == "left" then h = core.sha256(s .. h) else h = core.sha256(h .. s) end
  end
  if core.hex_encode(h) ~= proof.root then return false, "the proof does not lead to the root" end
  return true
end

---------------------------------------------------------------------------
-- Batching
---------------------------------------------------------------------------

local EVENT_COLS = "event_id, agent_id, timestamp, resource_type, quantity, cost, currency, merkle_root_id"

local function signer_key(opts)
  local pem = opts.signer_private_pem
  if pem == nil and opts.signer_key_file then pem = crypto.read_key_file(opts.signer_key_file) end
  if type(pem) ~= "string" then
    fail("validation", "batching needs the Merkle signing key: signer_private_pem or signer_key_file")
  end
  core.ec_public_from_private(pem) -- a bad key fails here, before any work, without quoting it
  return pem
end

local function public_key(opts)
  local pem = opts.public_pem
  if pem == nil and opts.public_key_file then pem = crypto.read_key_file(opts.public_key_file) end
  if type(pem) ~= "string" then
    fail("validation", "verification needs the Merkle public key: public_pem or public_key_file")
  end
  return pem
end

local function append_digest(path, b, event_ids, leaves)
  local hex = {}
  for i, l in ipairs(leaves) do hex[i] = core.hex_encode(l) end
  local line = crypto.canonical_json({
    batch_id = b.batch_id, root_id = b.root_id, merkle_root = b.merkle_root, signature = b.signature,
    first_event_id = b.first_event_id, last_event_id = b.last_event_id, event_count = b.event_count,
    source = b.source, created_at = b.created_at:naive(),
    event_ids = core.json_array(event_ids), leaves = core.json_array(hex),
  })
  local f, err = io.open(path, "ab")
  if not f then fail("io", "cannot append to the digest file: %s", tostring(err)) end
  f:write(line, "\n")
  f:close()
end

-- Close one batch in the session's current transaction; nil when there is
-- nothing (or, with partial = false, not enough) to batch.
local function batch_once(s, key, opts)
  -- Wait for in-flight appends and hold new ones for this short
  -- transaction: an id allocated before the lock either commits now or
  -- never, so no event can later appear inside a closed batch's range.
  -- The mode conflicts with itself, so batchers run one at a time.
  s:execute("LOCK TABLE ledger_events IN SHARE ROW EXCLUSIVE MODE")
  local through = opts.through_event_id
  local first = s:scalar("SELECT min(event_id) AS first FROM ledger_events " ..
                         "WHERE merkle_root_id IS NULL AND ($1::bigint IS NULL OR event_id <= $1)", through)
  if not first then return nil end
  local covering = s:first("SELECT batch_id, first_event_id, last_event_id FROM merkle_roots " ..
                           "WHERE first_event_id <= $1 AND last_event_id >= $1 LIMIT 1", first)
  if covering then
    fail("integrity", "event %d is not batched but lies inside batch %s (events %d..%d): it was committed " ..
         "after that batch closed, or the ledger was altered; run verify", first, covering.batch_id,
         covering.first_event_id, covering.last_event_id)
  end
  local bound = s:scalar("SELECT min(first_event_id) AS bound FROM merkle_roots WHERE first_event_id > $1", first)
  local rows = s:execute("SELECT " .. EVENT_COLS .. " FROM ledger_events WHERE event_id >= $1 " ..
                         "AND ($2::bigint IS NULL OR event_id < $2) AND ($3::bigint IS NULL OR event_id <= $3) " ..
                         "ORDER BY event_id LIMIT $4", first, bound, through, opts.batch_size)
  -- A row already linked to some batch ends the range (it can only be
  -- there if the ledger was altered; verify reports it).
  local events = {}
  for _, r in ipairs(rows) do
    if r.merkle_root_id ~= nil then break end
    events[#events + 1] = r
  end
  if #events == 0 or (opts.partial == false and #events < opts.batch_size) then return nil end

  local leaves = M.leaves(events)
  local root = core.merkle_root(leaves)
  local first_id, last_id = events[1].event_id, events[#events].event_id
  local mr = models.MerkleRoot {
    merkle_root = core.hex_encode(root), signature = core.ec_sign(key, root),
    event_count = #events, first_event_id = first_id, last_event_id = last_id,
    source = opts.source, created_at = core.utcnow(),
  }
  s:add(mr)
  s:flush()
  local _, n = s:execute("UPDATE ledger_events SET merkle_root_id = $1 WHERE event_id >= $2 AND event_id <= $3 " ..
                         "AND merkle_root_id IS NULL", mr.root_id, first_id, last_id)
  if n ~= #events then
    fail("integrity", "batch %s: linked %d events, expected %d (events %d..%d changed while batching)",
         mr.batch_id, n, #events, first_id, last_id)
  end
  local ids = {}
  for i, e in ipairs(events) do ids[i] = e.event_id end
  return {
    batch_id = mr.batch_id, root_id = mr.root_id, merkle_root = mr.merkle_root, signature = mr.signature,
    first_event_id = first_id, last_event_id = last_id, event_count = #events, source = mr.source,
    created_at = mr.created_at,
  }, ids, leaves
end

--- Batch the unbatched ledger events (merkle_root_id NULL), in event_id
-- order, into contiguous ranges. Each batch is one `session_scope` (its
-- own transaction when the session is idle, else a savepoint in the
-- caller's): a `merkle_roots` row plus `merkle_root_id` set on each event.
-- Each batch briefly takes `LOCK TABLE ledger_events IN SHARE ROW
-- EXCLUSIVE MODE`, which needs the table's UPDATE privilege.
-- @param session
-- @tparam table opts `signer_private_pem` or `signer_key_file` (required),
-- `batch_size` (default 1000), `source` ("live" or "migration"),
-- `partial` (default true: also close a last batch smaller than
-- batch_size), `max_batches`, `through_event_id` (batch only events up to
-- this id), `digest_file` (append one JSON line per committed batch with
-- its event ids and leaves: see the module notes), `progress` (called
-- with each batch once it is committed)
-- @treturn table list of batches `{batch_id, root_id, merkle_root,
-- signature, first_event_id, last_event_id, event_count, source, created_at}`
function M.batch(session, opts)
  opts = opts or {}
  local key = signer_key(opts)
  local o = {
    batch_size = opts.batch_size or M.DEFAULT_BATCH_SIZE, source = opts.source or "live",
    partial = opts.partial, through_event_id = opts.through_event_id,
  }
  if math.type(o.batch_size) ~= "integer" or o.batch_size < 1 then
    fail("validation", "batch_size must be a positive integer, got %s", tostring(o.batch_size))
  end
  if o.source ~= "live" and o.source ~= "migration" then
    fail("validation", "source must be 'live' or 'migration', got %s", tostring(o.source))
  end
  local done = {}
  while not opts.max_batches or #done < opts.max_batches do
    local b, ids, leaves = session:session_scope(function(s) return batch_once(s, key, o) end)
    if not b then break end
    done[#done + 1] = b
    if opts.digest_file then append_digest(opts.digest_file, b, ids, leaves) end
    if opts.progress then opts.progress(b) end
  end
  return done
end

--- Batch the history that existed before live batching began, with
-- source 'migration'. Only events up to the largest event_id present when
-- called (or `opts.through_event_id`) are taken, so live events arriving
-- meanwhile are left to `batch`.
-- @param session
-- @tparam table opts as `batch`
-- @treturn table list of batches
function M.backfill(session, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.source = "migration"
  if o.through_event_id == nil then
    o.through_event_id = session:session_scope(function(s)
      return s:scalar("SELECT max(event_id) AS last FROM ledger_events")
    end)
    if not o.through_event_id then return {} end
  end
  return M.batch(session, o)
end

---------------------------------------------------------------------------
-- Proofs
---------------------------------------------------------------------------

local function range_rows(s, first, last)
  return s:execute("SELECT " .. EVENT_COLS .. " FROM ledger_events WHERE event_id >= $1 AND event_id <= $2 " ..
                   "ORDER BY event_id", first, last)
end

--- The inclusion proof of one event in its batch, or nil and a message
-- when the event does not exist or is not batched yet.
-- @param session
-- @tparam integer event_id
-- @treturn table `{event_id, batch_id, root_id, leaf, leaf_index (0-based),
-- event_count, siblings = {{hash, side}, ...}, root (stored),
-- computed_root}`; `computed_root ~= root` means the batch was altered
function M.proof(session, event_id)
  event_id = math.tointeger(event_id)
  if not event_id then fail("validation", "proof: event_id must be an integer") end
  return session:session_scope(function(s)
    local ev = s:first("SELECT event_id, merkle_root_id FROM ledger_events WHERE event_id = $1", event_id)
    if not ev then return nil, string.format("event %d not found", event_id) end
    local root
    if ev.merkle_root_id then
      root = s:first("SELECT * FROM merkle_roots WHERE root_id = $1", ev.merkle_root_id)
    else
      root = s:first("SELECT * FROM merkle_roots WHERE first_event_id <= $1 AND last_event_id >= $1 " ..
                     "ORDER BY created_at LIMIT 1", event_id)
    end
    if not root then return nil, string.format("event %d is not batched yet", event_id) end
    local rows = range_rows(s, root.first_event_id, root.last_event_id)
    local index
    for i, r in ipairs(rows) do
      if r.event_id == event_id then index = i break end
    end
    if not index then
      return nil, string.format("event %d is linked to batch %s but outside its range %d..%d", event_id,
                                root.batch_id, root.first_event_id, root.last_event_id)
    end
    local leaves = M.leaves(rows)
    local computed, sibs, sides = core.merkle_proof(leaves, index)
    local siblings = {}
    for k, h in ipairs(sibs) do siblings[k] = { hash = core.hex_encode(h), side = sides[k] } end
    return {
      event_id = event_id, batch_id = root.batch_id, root_id = root.root_id,
      leaf = core.hex_encode(leaves[index]), leaf_index = index - 1, event_count = #rows,
      siblings = siblings, root = root.merkle_root, computed_root = core.hex_encode(computed),
    }
  end)
end

---------------------------------------------------------------------------
-- Verification
---------------------------------------------------------------------------

local function read_digest(path)
  local f, err = io.open(path, "rb")
  if not f then fail("io", "cannot read the digest file: %s", tostring(err)) end
  local by_batch, order, lineno = {}, {}, 0
  for line in f:lines() do
    lineno = lineno + 1
    if line:find("%S") then
      local ok, d = pcall(core.json_decode, line)
      if not ok or type(d) ~= "table" or type(d.batch_id) ~= "string" then
        f:close()
        fail("integrity", "digest file line %d is not a batch record", lineno)
      end
      by_batch[d.batch_id] = d
      order[#order + 1] = d
    end
  end
  f:close()
  return by_batch, order
end

local function list_ids(ids, max)
  max = max or 20
  local out = {}
  for i = 1, math.min(#ids, max) do out[i] = tostring(ids[i]) end
  local s = table.concat(out, ", ")
  if #ids > max then s = s .. string.format(" and %d more", #ids - max) end
  return s
end

--- Verify every Merkle batch against the ledger.
--
-- A batch passes when the root recomputed from the rows in its range
-- equals the stored root, `event_count` equals the rows in the range, its
-- range overlaps no other batch's, and the root's signature verifies with
-- the public key. Also reported as problems: rows in a range linked to
-- another batch or to none, rows linked to a batch outside its range, and
-- with a digest file, batches that are gone or differ from the digest.
-- @param session
-- @tparam table opts `public_pem` or `public_key_file` (required),
-- `digest_file` (optional, written by `batch`)
-- @treturn table report `{ok, batches, events, unbatched, problems = {{kind,
-- batch_id, first_event_id, last_event_id, event_ids, message}, ...},
-- warnings = {...}}`; kinds: malformed, overlap, count_mismatch,
-- missing_events, unlinked_events, root_mismatch, changed_events,
-- bad_signature, link_outside_range, digest_missing_batch,
-- digest_mismatch
function M.verify(session, opts)
  opts = opts or {}
  local pub = public_key(opts)
  core.ec_verify(pub, "", "00") -- a malformed key raises now, with a clear message
  local digest, digest_order
  if opts.digest_file then digest, digest_order = read_digest(opts.digest_file) end
  local report = { ok = true, batches = 0, events = 0, unbatched = 0, problems = {}, warnings = {} }
  local function problem(kind, root, ids, fmt, ...)
    local msg = string.format(fmt, ...)
    if root then
      msg = string.format("batch %s (events %d..%d): %s", root.batch_id, root.first_event_id,
                          root.last_event_id, msg)
    end
    report.problems[#report.problems + 1] = {
      kind = kind, batch_id = root and root.batch_id, root_id = root and root.root_id,
      first_event_id = root and root.first_event_id, last_event_id = root and root.last_event_id,
      event_ids = ids, message = msg,
    }
    report.ok = false
  end

  session:session_scope(function(s)
    local roots = s:execute("SELECT * FROM merkle_roots ORDER BY first_event_id, last_event_id, created_at, root_id")
    local seen = {}
    local reach -- the batch reaching furthest so far
    for _, r in ipairs(roots) do
      report.batches = report.batches + 1
      seen[r.batch_id] = r
      if r.first_event_id > r.last_event_id or r.event_count < 1 then
        problem("malformed", r, nil, "malformed range or event_count %d", r.event_count)
      end
      if reach and r.first_event_id <= reach.last_event_id then
        problem("overlap", r, nil, "range overlaps batch %s (events %d..%d)", reach.batch_id,
                reach.first_event_id, reach.last_event_id)
      end
      if not reach or r.last_event_id > reach.last_event_id then reach = r end

      local rows = range_rows(s, r.first_event_id, r.last_event_id)
      report.events = report.events + #rows
      if #rows ~= r.event_count then
        problem("count_mismatch", r, nil, "event_count is %d but the range holds %d rows", r.event_count, #rows)
        local present = {}
        for _, e in ipairs(rows) do present[e.event_id] = true end
        local missing = {}
        if r.last_event_id - r.first_event_id + 1 == r.event_count then
          -- The range was dense when batched: every absent id was deleted.
          for id = r.first_event_id, r.last_event_id do
            if not present[id] then missing[#missing + 1] = id end
          end
        else
          if not present[r.first_event_id] then missing[#missing + 1] = r.first_event_id end
          if r.last_event_id ~= r.first_event_id and not present[r.last_event_id] then
            missing[#missing + 1] = r.last_event_id
          end
        end
        if #missing > 0 then
          problem("missing_events", r, missing, "event%s %s deleted", #missing == 1 and "" or "s",
                  list_ids(missing))
        end
      end
      local unlinked = {}
      for _, e in ipairs(rows) do
        if e.merkle_root_id ~= r.root_id then unlinked[#unlinked + 1] = e.event_id end
      end
      if #unlinked > 0 then
        problem("unlinked_events", r, unlinked, "event%s %s in the range %s not linked to this batch " ..
                "(inserted after it closed, or forged)", #unlinked == 1 and "" or "s", list_ids(unlinked),
                #unlinked == 1 and "is" or "are")
      end

      local leaves = #rows > 0 and M.leaves(rows) or nil
      local computed = leaves and core.hex_encode(core.merkle_root(leaves)) or "(no rows)"
      if computed ~= r.merkle_root then
        problem("root_mismatch", r, nil, "root mismatch: stored %s, recomputed %s", tostring(r.merkle_root), computed)
        local d = digest and digest[r.batch_id]
        if d and type(d.event_ids) == "table" and type(d.leaves) == "table" then
          local was = {}
          for i, id in ipairs(d.event_ids) do was[id] = d.leaves[i] end
          local changed = {}
          for i, e in ipairs(rows) do
            local old = was[e.event_id]
            if old and old ~= core.hex_encode(leaves[i]) then changed[#changed + 1] = e.event_id end
          end
          if #changed > 0 then
            problem("changed_events", r, changed, "event%s %s changed since batching (per the digest)",
                    #changed == 1 and "" or "s", list_ids(changed))
          end
        elseif not digest then
          report.warnings[#report.warnings + 1] = string.format(
            "batch %s: the changed event cannot be named from the root alone (no digest file given)", r.batch_id)
        end
      end
      local sok, good = pcall(crypto.verify_root, r.merkle_root, r.signature, pub)
      if not sok or not good then
        problem("bad_signature", r, nil, "the root's signature does not verify with the given public key")
      end
      if digest then
        local d = digest[r.batch_id]
        if d and (d.merkle_root ~= r.merkle_root or d.first_event_id ~= r.first_event_id or
                  d.last_event_id ~= r.last_event_id or d.event_count ~= r.event_count) then
          problem("digest_mismatch", r, nil, "differs from the digest (digest: events %s..%s, %s events, root %s)",
                  tostring(d.first_event_id), tostring(d.last_event_id), tostring(d.event_count),
                  tostring(d.merkle_root))
        end
      end
    end

    local strays = s:execute(
      "SELECT e.event_id, r.batch_id, r.root_id, r.first_event_id, r.last_event_id FROM ledger_events e " ..
      "JOIN merkle_roots r ON r.root_id = e.merkle_root_id " ..
      "WHERE e.event_id < r.first_event_id OR e.event_id > r.last_event_id ORDER BY e.event_id")
    for _, x in ipairs(strays) do
      problem("link_outside_range", x, { x.event_id }, "event %d is linked to this batch but lies outside its range",
              x.event_id)
    end

    report.unbatched = s:scalar("SELECT count(*) AS n FROM ledger_events WHERE merkle_root_id IS NULL") or 0
    if reach then
      local late = s:execute("SELECT event_id FROM ledger_events WHERE merkle_root_id IS NULL AND event_id < $1 " ..
                             "ORDER BY event_id LIMIT 21", reach.last_event_id)
      if #late > 0 then
        local ids = {}
        for i, x in ipairs(late) do ids[i] = x.event_id end
        report.warnings[#report.warnings + 1] = string.format(
          "unbatched event%s %s lie below the last batched event %d", #ids == 1 and "" or "s",
          list_ids(ids, 20), reach.last_event_id)
      end
    end

    if digest then
      for _, d in ipairs(digest_order) do
        if not seen[d.batch_id] then
          problem("digest_missing_batch", nil, nil,
                  "batch %s (events %s..%s, root %s) is in the digest but not in the database", d.batch_id,
                  tostring(d.first_event_id), tostring(d.last_event_id), tostring(d.merkle_root))
        end
      end
    end
  end)
  return report
end

--- A verification report as text lines (for the CLI and logs; it holds
-- no secrets).
-- @tparam table report from `verify`
-- @treturn string
function M.format_report(report)
  local out = {}
  out[1] = string.format("%s: %d batches, %d events checked, %d unbatched, %d problem%s",
                         report.ok and "OK" or "FAILED", report.batches, report.events, report.unbatched,
                         #report.problems, #report.problems == 1 and "" or "s")
  for _, p in ipairs(report.problems) do out[#out + 1] = "  " .. p.kind .. ": " .. p.message end
  for _, w in ipairs(report.warnings) do out[#out + 1] = "  warning: " .. w end
  return table.concat(out, "\n")
end

return M
