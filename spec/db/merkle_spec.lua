-- Merkle batches over ledger_events against a real database (a fresh one
-- for this file): batching in contiguous ranges, proofs, and verification
-- that catches edited, deleted, swapped, forged and late rows (L5, L8).
local core = require "caracal.core"
local crypto = require "caracal.crypto"
local merkle = require "caracal.merkle"
local authority = require "caracal.authority"
local ledgerdb = require "ledgerdb"

-- Seed n events for an agent; timestamps carry microseconds on odd ids.
local function seed(h, agent_id, n, base)
  h.manager:session_scope(function(s)
    s:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost, currency)
                SELECT $1, timestamp '2024-01-01 00:00:00' + (g * interval '1 second')
                                + ((g % 2) * interval '0.000123 second'),
                       'api.openai.gpt4', g, ($2::numeric + g) / 1000, CASE WHEN g % 3 = 0 THEN 'EUR' ELSE 'USD' END
                FROM generate_series(1, $3) g]], agent_id, base or 0, n)
  end)
end

local function kinds(report)
  local out = {}
  for _, p in ipairs(report.problems) do out[#out + 1] = p.kind end
  return out
end

local function find_problem(report, kind)
  for _, p in ipairs(report.problems) do
    if p.kind == kind then return p end
  end
end

describe("Merkle batches (database)", function()
  local h, priv, pub, agent

  local function scope(fn) return h.manager:session_scope(fn) end

  local function rows(sql, ...)
    local args = table.pack(...)
    return scope(function(s) return s:execute(sql, table.unpack(args, 1, args.n)) end)
  end

  local function batch(opts)
    opts = opts or {}
    opts.signer_private_pem = opts.signer_private_pem or priv
    local s <close> = h.manager:session()
    return merkle.batch(s, opts)
  end

  local function verify(opts)
    opts = opts or {}
    opts.public_pem = opts.public_pem or pub
    return scope(function(s) return merkle.verify(s, opts) end)
  end

  local function reset()
    ledgerdb.tamper(h, function(s)
      s:execute("DELETE FROM ledger_events")
      s:execute("DELETE FROM merkle_roots")
      s:execute("ALTER SEQUENCE ledger_events_event_id_seq RESTART WITH 1")
    end)
  end

  setup(function()
    h = ledgerdb.create("merkle_spec")
    priv, pub = crypto.generate_keypair()
    agent = scope(function(s)
      return authority.add_principal(s, { name = "agent", principal_type = "agent", owner = "ops" })
    end)
  end)

  teardown(function()
    if h then h.close() end
  end)

  before_each(reset)

  it("batches unbatched events in event_id order into contiguous ranges of 1000", function()
    seed(h, agent.principal_id, 2500)
    local done = batch()
    assert.equal(3, #done)
    assert.same({ 1, 1000, 1000 }, { done[1].first_event_id, done[1].last_event_id, done[1].event_count })
    assert.same({ 1001, 2000, 1000 }, { done[2].first_event_id, done[2].last_event_id, done[2].event_count })
    assert.same({ 2001, 2500, 500 }, { done[3].first_event_id, done[3].last_event_id, done[3].event_count })
    local roots = rows("SELECT * FROM merkle_roots ORDER BY first_event_id")
    assert.equal(3, #roots)
    for i, r in ipairs(roots) do
      assert.equal(done[i].batch_id, r.batch_id)
      assert.equal("live", r.source)
      assert.truthy(r.merkle_root:match("^[0-9a-f]+$") and #r.merkle_root == 64)
      -- The stored root is the root of the rows in its range, signed over the 32 raw bytes.
      local evs = rows("SELECT * FROM ledger_events WHERE event_id BETWEEN $1 AND $2 ORDER BY event_id",
                       r.first_event_id, r.last_event_id)
      assert.equal(r.merkle_root, merkle.root_hex(evs))
      assert.is_true(core.ec_verify(pub, core.hex_decode(r.merkle_root), r.signature))
      for _, e in ipairs(evs) do assert.equal(r.root_id, e.merkle_root_id) end
    end
    assert.not_equal(roots[1].batch_id, roots[2].batch_id)
    assert.same({}, batch()) -- nothing left
  end)

  it("takes batch_size, max_batches and partial", function()
    seed(h, agent.principal_id, 20)
    local done = batch({ batch_size = 7, partial = false })
    assert.equal(2, #done)
    assert.equal(14, done[2].last_event_id)
    assert.equal(6, rows("SELECT count(*) AS n FROM ledger_events WHERE merkle_root_id IS NULL")[1].n)
    done = batch({ batch_size = 3, max_batches = 1 })
    assert.same({ 15, 17 }, { done[1].first_event_id, done[1].last_event_id })
    done = batch({ batch_size = 100 })
    assert.same({ 18, 20, 3 }, { done[1].first_event_id, done[1].last_event_id, done[1].event_count })
    local ok, err = pcall(batch, { batch_size = 0 })
    assert.is_false(ok)
    assert.equal("batch_size must be a positive integer, got 0", err.message)
  end)

  it("refuses to batch without a usable signing key, never quoting it", function()
    seed(h, agent.principal_id, 3)
    local s <close> = h.manager:session()
    local ok, err = pcall(merkle.batch, s, {})
    assert.is_false(ok)
    assert.equal("batching needs the Merkle signing key: signer_private_pem or signer_key_file", err.message)
    ok, err = pcall(merkle.batch, s, { signer_private_pem = pub })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("invalid private key", 1, true))
    ok, err = pcall(merkle.batch, s, { signer_key_file = "/nonexistent/key.pem" })
    assert.is_false(ok)
    assert.equal("cannot read key file: /nonexistent/key.pem: No such file or directory", err.message)
    assert.equal(0, rows("SELECT count(*) AS n FROM merkle_roots")[1].n)
  end)

  it("reads the signing key from a file", function()
    seed(h, agent.principal_id, 3)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(priv)
    f:close()
    local s <close> = h.manager:session()
    local done = merkle.batch(s, { signer_key_file = path })
    os.remove(path)
    assert.equal(1, #done)
    assert.is_true(verify().ok)
  end)

  it("verifies an untouched ledger", function()
    seed(h, agent.principal_id, 2100)
    batch()
    seed(h, agent.principal_id, 5) -- not batched yet: reported, not a problem
    local report = verify()
    assert.is_true(report.ok)
    assert.equal(3, report.batches)
    assert.equal(2100, report.events)
    assert.equal(5, report.unbatched)
    assert.same({}, report.problems)
    assert.equal("OK: 3 batches, 2100 events checked, 5 unbatched, 0 problems", merkle.format_report(report))
  end)

  it("gives inclusion proofs that verify against the stored, signed root", function()
    seed(h, agent.principal_id, 1500)
    batch()
    seed(h, agent.principal_id, 1)
    for _, id in ipairs({ 1, 2, 999, 1000, 1001, 1333, 1500 }) do
      local p = scope(function(s) return merkle.proof(s, id) end)
      local ev = rows("SELECT * FROM ledger_events WHERE event_id = $1", id)[1]
      local root = rows("SELECT * FROM merkle_roots WHERE root_id = $1", ev.merkle_root_id)[1]
      assert.equal(root.merkle_root, p.root)
      assert.equal(root.merkle_root, p.computed_root)
      assert.equal(root.batch_id, p.batch_id)
      assert.equal(root.event_count, p.event_count)
      assert.equal(id - root.first_event_id, p.leaf_index)
      assert.is_true(merkle.verify_proof(p, { event = ev, root = root.merkle_root, event_count = root.event_count }))
      assert.is_true(crypto.verify_root(p.root, root.signature, pub))
    end
    local p, why = scope(function(s) return merkle.proof(s, 1501) end)
    assert.is_nil(p)
    assert.equal("event 1501 is not batched yet", why)
    p, why = scope(function(s) return merkle.proof(s, 99999) end)
    assert.is_nil(p)
    assert.equal("event 99999 not found", why)
  end)

  describe("tampering, as the table owner bypassing the append-only triggers", function()
    local done

    before_each(function()
      seed(h, agent.principal_id, 2500)
      done = batch()
    end)

    it("a changed row: verify names its batch", function()
      ledgerdb.tamper(h, function(s) s:execute("UPDATE ledger_events SET quantity = quantity + 1 WHERE event_id = 1234") end)
      local report = verify()
      assert.is_false(report.ok)
      assert.same({ "root_mismatch" }, kinds(report))
      local p = report.problems[1]
      assert.equal(done[2].batch_id, p.batch_id)
      assert.equal(1, p.message:find("batch " .. done[2].batch_id .. " (events 1001..2000): root mismatch: stored " ..
                                     done[2].merkle_root .. ", recomputed ", 1, true))
      assert.truthy(report.warnings[1]:find("cannot be named from the root alone", 1, true))
      assert.truthy(merkle.format_report(report):find("^FAILED: 3 batches"))
      -- Its proof no longer leads to the signed root.
      local pr = scope(function(s) return merkle.proof(s, 1234) end)
      assert.not_equal(pr.root, pr.computed_root)
      assert.is_false(merkle.verify_proof(pr))
    end)

    it("a deleted row: count mismatch, and the row is named", function()
      ledgerdb.tamper(h, function(s) s:execute("DELETE FROM ledger_events WHERE event_id = 42") end)
      local report = verify()
      assert.same({ "count_mismatch", "missing_events", "root_mismatch" }, kinds(report))
      assert.equal(done[1].batch_id, report.problems[1].batch_id)
      assert.equal("batch " .. done[1].batch_id .. " (events 1..1000): event_count is 1000 but the range holds 999 rows",
                   report.problems[1].message)
      assert.same({ 42 }, report.problems[2].event_ids)
      assert.equal("batch " .. done[1].batch_id .. " (events 1..1000): event 42 deleted", report.problems[2].message)
    end)

    it("two rows' costs swapped: root mismatch", function()
      ledgerdb.tamper(h, function(s)
        s:execute([[UPDATE ledger_events SET cost = CASE event_id WHEN 2001 THEN (SELECT cost FROM ledger_events WHERE event_id = 2002)
                    ELSE (SELECT cost FROM ledger_events WHERE event_id = 2001) END WHERE event_id IN (2001, 2002)]])
      end)
      local c = rows("SELECT cost FROM ledger_events WHERE event_id IN (2001, 2002) ORDER BY event_id")
      assert.equal("2.002000", tostring(c[1].cost))
      local report = verify()
      assert.same({ "root_mismatch" }, kinds(report))
      assert.equal(done[3].batch_id, report.problems[1].batch_id)
    end)

    it("two rows swapped whole (ids kept in order): root mismatch", function()
      ledgerdb.tamper(h, function(s)
        s:execute("UPDATE ledger_events SET event_id = -event_id WHERE event_id IN (10, 11)")
        s:execute("UPDATE ledger_events SET event_id = CASE event_id WHEN -10 THEN 11 ELSE 10 END WHERE event_id < 0")
      end)
      local report = verify()
      assert.same({ "root_mismatch" }, kinds(report))
      assert.equal(done[1].batch_id, report.problems[1].batch_id)
    end)

    it("a forged row inserted inside a batch's range: named, and batching refuses to go on", function()
      ledgerdb.tamper(h, function(s) s:execute("DELETE FROM ledger_events WHERE event_id = 1500") end)
      scope(function(s)
        s:execute([[INSERT INTO ledger_events (event_id, agent_id, "timestamp", resource_type, quantity, cost, currency)
                    VALUES (1500, $1, timestamp '2024-01-01', 'forged', 1, 0, 'USD')]], agent.principal_id)
      end)
      local report = verify()
      local p = find_problem(report, "unlinked_events")
      assert.same({ 1500 }, p.event_ids)
      assert.equal("batch " .. done[2].batch_id .. " (events 1001..2000): event 1500 in the range is not linked to " ..
                   "this batch (inserted after it closed, or forged)", p.message)
      assert.truthy(find_problem(report, "root_mismatch"))
      local ok, err = pcall(batch)
      assert.is_false(ok)
      assert.equal("integrity", err.kind)
      assert.equal("event 1500 is not batched but lies inside batch " .. done[2].batch_id .. " (events 1001..2000): " ..
                   "it was committed after that batch closed, or the ledger was altered; run verify", err.message)
    end)

    it("a root signed with another key, or re-signed after an edit, fails the signature check", function()
      local _, other_pub = crypto.generate_keypair()
      local report = verify({ public_pem = other_pub })
      assert.same({ "bad_signature", "bad_signature", "bad_signature" }, kinds(report))
      -- An attacker recomputes the root after editing, but cannot sign it.
      local other_priv = crypto.generate_keypair()
      ledgerdb.tamper(h, function(s)
        s:execute("UPDATE ledger_events SET cost = 0 WHERE event_id = 7")
        local evs = s:execute("SELECT * FROM ledger_events WHERE event_id BETWEEN 1 AND 1000 ORDER BY event_id")
        local root = merkle.root_hex(evs)
        s:execute("UPDATE merkle_roots SET merkle_root = $2, signature = $3 WHERE batch_id = $1", done[1].batch_id,
                  root, crypto.sign_root(root, other_priv))
      end)
      report = verify()
      assert.same({ "bad_signature" }, kinds(report))
      assert.equal(done[1].batch_id, report.problems[1].batch_id)
    end)

    it("an overlapping forged batch is named with the batch it overlaps", function()
      scope(function(s)
        local root = core.sha256_hex("forged")
        s:execute("INSERT INTO merkle_roots (root_id, batch_id, merkle_root, signature, event_count, first_event_id, " ..
                  "last_event_id, source, created_at) VALUES ($1, $2, $3, $4, 10, 995, 1004, 'live', $5)",
                  core.uuid4(), core.uuid4(), root, crypto.sign_root(root, priv), core.utcnow())
      end)
      local report = verify()
      local p = find_problem(report, "overlap")
      assert.truthy(p.message:find("range overlaps batch " .. done[1].batch_id .. " (events 1..1000)", 1, true))
      p = find_problem(report, "unlinked_events")
      assert.equal(10, #p.event_ids)
    end)

    it("with the batches' digest file, names the changed event and finds a removed batch (L8)", function()
      reset()
      seed(h, agent.principal_id, 2500)
      local digest = os.tmpname()
      done = batch({ digest_file = digest })
      assert.is_true(verify({ digest_file = digest }).ok)
      ledgerdb.tamper(h, function(s)
        s:execute("UPDATE ledger_events SET resource_type = 'x' WHERE event_id = 1777")
        -- Drop the newest batch entirely: rows and root.
        s:execute("DELETE FROM ledger_events WHERE event_id > 2000")
        s:execute("DELETE FROM merkle_roots WHERE batch_id = $1", done[3].batch_id)
      end)
      local report = verify({ digest_file = digest })
      os.remove(digest)
      assert.same({ "root_mismatch", "changed_events", "digest_missing_batch" }, kinds(report))
      assert.same({ 1777 }, report.problems[2].event_ids)
      assert.equal("batch " .. done[2].batch_id .. " (events 1001..2000): event 1777 changed since batching " ..
                   "(per the digest)", report.problems[2].message)
      assert.truthy(report.problems[3].message:find("batch " .. done[3].batch_id .. " (events 2001..2500", 1, true))
      -- Without the digest, the removed tail goes unnoticed: that is what the digest is for.
      assert.same({ "root_mismatch" }, kinds(verify()))
    end)
  end)

  it("back-fills existing history with source 'migration', leaving later events to live batching", function()
    seed(h, agent.principal_id, 1200)
    local s <close> = h.manager:session()
    local done = merkle.backfill(s, { signer_private_pem = priv, max_batches = 1 })
    assert.equal(1, #done)
    seed(h, agent.principal_id, 10) -- arrives during the back-fill
    local more = merkle.backfill(s, { signer_private_pem = priv, through_event_id = 1200 })
    assert.equal(1, #more)
    assert.same({ 1001, 1200 }, { more[1].first_event_id, more[1].last_event_id })
    assert.same({ "migration", "migration" }, { done[1].source, more[1].source })
    local live = merkle.batch(s, { signer_private_pem = priv })
    assert.same({ 1201, 1210, "live" }, { live[1].first_event_id, live[1].last_event_id, live[1].source })
    local src = rows("SELECT source, count(*) AS n FROM merkle_roots GROUP BY source ORDER BY source")
    assert.same({ "live", 1 }, { src[1].source, src[1].n })
    assert.same({ "migration", 2 }, { src[2].source, src[2].n })
    assert.is_true(verify().ok)
  end)

  it("batches around gaps in event ids without flagging them", function()
    seed(h, agent.principal_id, 5)
    scope(function(s) s:execute("SELECT setval('ledger_events_event_id_seq', 20)") end)
    seed(h, agent.principal_id, 5) -- ids 21..25
    local done = batch()
    assert.same({ 1, 25, 10 }, { done[1].first_event_id, done[1].last_event_id, done[1].event_count })
    assert.is_true(verify().ok)
  end)

  it("waits for an append in flight, so a late commit never lands inside a closed batch", function()
    local bin = os.getenv("CARACAL_BIN")
    if not bin then return pending("CARACAL_BIN is not set: run through spec/run.sh") end
    seed(h, agent.principal_id, 5)
    -- An append in flight: it holds event id 6 and has not committed.
    local a = h.manager:session()
    a:execute([[INSERT INTO ledger_events (agent_id, "timestamp", resource_type, quantity, cost, currency)
                VALUES ($1, timestamp '2024-01-02', 'slow', 1, 1, 'USD')]], agent.principal_id)
    seed(h, agent.principal_id, 1) -- id 7, committed
    -- Batch from another process while the append is in flight.
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local f = assert(io.open(dir .. "/key.pem", "wb"))
    f:write(priv)
    f:close()
    f = assert(io.open(dir .. "/batch.lua", "wb"))
    f:write([[
local db = require "caracal.db"
local merkle = require "caracal.merkle"
local m = db.create_connection_manager({ url = os.getenv("LEDGER_URL") })
local s <close> = m:session()
local done = merkle.batch(s, { signer_key_file = os.getenv("LEDGER_KEY") })
local out = assert(io.open(os.getenv("LEDGER_OUT"), "w"))
for _, b in ipairs(done) do out:write(b.first_event_id, "..", b.last_event_id, "\n") end
out:close()
]])
    f:close()
    local root = os.getenv("CARACAL_ROOT") or "."
    assert(os.execute(string.format("cd %s && LEDGER_URL='%s' LEDGER_KEY=%s/key.pem LEDGER_OUT=%s/out.tmp " ..
                                    "CARACAL_LUA_DIR=%s/lua %s %s/batch.lua >%s/log 2>&1 && mv %s/out.tmp %s/out &",
                                    root, h.url, dir, dir, root, bin, dir, dir, dir, dir)))
    -- The batcher waits on the table lock until the append ends.
    local waiting = false
    for _ = 1, 100 do
      waiting = scope(function(s)
        return s:scalar([[SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                          WHERE c.relname = 'ledger_events' AND NOT l.granted]])
      end) > 0
      if waiting then break end
      os.execute("sleep 0.05")
    end
    assert.is_true(waiting)
    a:commit()
    a:close()
    local out
    for _ = 1, 200 do
      local o = io.open(dir .. "/out")
      if o then
        out = o:read("a")
        o:close()
        break
      end
      os.execute("sleep 0.05")
    end
    local log = io.open(dir .. "/log"):read("a")
    os.execute("rm -rf " .. dir)
    assert.equal("1..7\n", out, log)
    assert.is_true(verify().ok)
  end)

  it("roots written here are the roots the original computes from the rows (Python)", function()
    if not ledgerdb.has_python() then return pending("python3 with cryptography is not installed") end
    seed(h, agent.principal_id, 1003)
    batch()
    local evs = rows([[SELECT event_id, agent_id::text AS agent, resource_type, quantity::text AS q, cost::text AS c,
                              currency, CASE WHEN pg_typeof("timestamp")::text = 'timestamp without time zone'
                                             THEN "timestamp"::text
                                             ELSE ("timestamp" AT TIME ZONE 'UTC')::text END AS ts
                       FROM ledger_events ORDER BY event_id]])
    local roots = rows("SELECT merkle_root, signature, first_event_id, last_event_id FROM merkle_roots ORDER BY first_event_id")
    local input = { pub = pub, events = {}, roots = {} }
    for i, e in ipairs(evs) do input.events[i] = { e.event_id, e.agent, e.ts, e.resource_type, e.q, e.c, e.currency } end
    for i, r in ipairs(roots) do input.roots[i] = { r.first_event_id, r.last_event_id, r.merkle_root, r.signature } end
    local out = ledgerdb.python([[
import json, sys, hashlib
from datetime import datetime
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d = json.load(open(sys.argv[1]))
key = serialization.load_pem_public_key(d["pub"].encode())
h = lambda b: hashlib.sha256(b).digest()
by_id = {e[0]: e for e in d["events"]}
for first, last, stored, sig in d["roots"]:
    leaves = []
    for i in range(first, last + 1):
        eid, agent, ts, rtype, q, c, cur = by_id[i]
        data = f"{eid}|{agent}|{datetime.fromisoformat(ts).isoformat()}|{rtype}|{q}|{c}|{cur}"
        leaves.append(h(h(data.encode())))
    level = leaves
    while len(level) > 1:
        level = [h(level[i] + (level[i + 1] if i + 1 < len(level) else level[i])) for i in range(0, len(level), 2)]
    key.verify(bytes.fromhex(sig), level[0], ec.ECDSA(hashes.SHA256()))
    print(level[0].hex() == stored)
]], crypto.canonical_json(input))
    assert.equal("True\nTrue\n", out)
  end)
end)

describe("Merkle batches at the v0.5 baseline (revision 1, naive timestamps)", function()
  local h

  setup(function()
    local base = ledgerdb.baseline_revision()
    h = ledgerdb.create("merkle_v05", base)
  end)

  teardown(function()
    if h then h.close() end
  end)

  it("batch, proof and verify work on the original's schema", function()
    local priv, pub = crypto.generate_keypair()
    local agent = h.manager:session_scope(function(s)
      return authority.add_principal(s, { name = "agent", principal_type = "agent", owner = "ops" })
    end)
    local ty = h.manager:session_scope(function(s)
      return s:scalar([[SELECT data_type FROM information_schema.columns
                        WHERE table_name = 'ledger_events' AND column_name = 'timestamp']])
    end)
    assert.equal("timestamp without time zone", ty)
    seed(h, agent.principal_id, 1201)
    local s <close> = h.manager:session()
    local done = merkle.batch(s, { signer_private_pem = priv })
    assert.equal(2, #done)
    local report = merkle.verify(s, { public_pem = pub })
    assert.is_true(report.ok)
    local p = merkle.proof(s, 1201)
    assert.is_true(merkle.verify_proof(p))
    assert.equal(200, p.leaf_index)
  end)
end)
