--- `caracal merkle batch|proof|verify|backfill`: Merkle batches over the
-- spending ledger.
-- @module caracal.tasks.merkle
local core = require "caracal.core"
local merkle = require "caracal.merkle"
local progress = require "caracal.progress"
local task = require "caracal.task"

local M = {}

M.usage = [==[
Usage: caracal merkle batch --key-file PEM [--batch-size N] [--digest-file F] [--json]
       caracal merkle backfill --key-file PEM [--batch-size N] [--digest-file F] [--json]
       caracal merkle proof EVENT_ID [--json]
       caracal merkle verify --public-key-file PEM [--digest-file F] [--json]

batch     closes batches of unbatched ledger events (1000 per batch by
          default) and signs each root with the key in --key-file (or
          $CARACAL_MERKLE_KEY_FILE), kept outside the database so that
          whoever can rewrite ledger rows cannot re-sign them
backfill  the same for history written before batching began (source
          'migration')
proof     the inclusion proof of one event: sibling hashes from leaf to root
verify    recomputes every batch (roots, counts, non-overlap, signatures);
          exit 0 when all pass, 1 with a report naming each bad batch and,
          where it can tell, the events
--digest-file keeps one line per batch outside the database, so verify
can name the exact changed event and notice a deleted batch.
]==]

local SPEC = { ["key-file"] = "value", ["public-key-file"] = "value", ["batch-size"] = "value",
               ["digest-file"] = "value", json = "flag" }

-- A progress bar over the events still unbatched when the task starts.
local function with_progress(ctx, session, o)
  local total = session:scalar("SELECT count(*) FROM ledger_events WHERE merkle_root_id IS NULL")
  local bar = progress.new { total = total, label = "batching", tty = ctx.isatty("stderr") }
  local done = 0
  o.progress = function(b)
    done = done + b.event_count
    bar:update(done)
  end
  return bar
end

local function batch_opts(opts, source)
  local key = opts.key_file or os.getenv("CARACAL_MERKLE_KEY_FILE")
  if not key then error({ usage = "needs --key-file (or CARACAL_MERKLE_KEY_FILE)" }, 0) end
  local size = math.tointeger(tonumber(opts.batch_size or "1000"))
  if not size or size < 1 then error({ usage = "--batch-size must be a positive integer" }, 0) end
  return { signer_key_file = key, batch_size = size, source = source, digest_file = opts.digest_file }
end

local function report_batches(opts, batches)
  task.emit(opts, batches, function()
    local events = 0
    for _, b in ipairs(batches) do events = events + b.event_count end
    io.write(string.format("closed %d batch%s over %d events\n", #batches, #batches == 1 and "" or "es", events))
  end)
end

local handlers = {}

local function run_batches(ctx, opts, source, fn)
  local o = batch_opts(opts, source)
  -- One session, each batch its own transaction (batch scopes commit as
  -- they go), so a long run keeps what it finished if it stops.
  local s <close> = ctx.manager():session()
  local bar = with_progress(ctx, s, o)
  s:commit()
  local batches = fn(s, o)
  bar:finish()
  report_batches(opts, batches)
end

function handlers.batch(ctx, opts) run_batches(ctx, opts, "live", merkle.batch) end
function handlers.backfill(ctx, opts) run_batches(ctx, opts, "migration", merkle.backfill) end

function handlers.proof(ctx, opts, words)
  local id = math.tointeger(tonumber(words[2] or ""))
  if not id then error({ usage = "merkle proof needs an EVENT_ID (an integer)" }, 0) end
  local proof, why = ctx.manager():session_scope(function(s) return merkle.proof(s, id) end)
  if not proof then error(core.Error { kind = "not_found", message = why }, 0) end
  task.emit(opts, proof, function()
    io.write(string.format("event %d in batch %s (leaf %d of %d)\nleaf  %s\n", proof.event_id, proof.batch_id,
      proof.leaf_index, proof.event_count, proof.leaf))
    for i, sib in ipairs(proof.siblings) do io.write(string.format("%2d %-5s %s\n", i, sib.side, sib.hash)) end
    io.write("root  ", proof.root, "\n")
  end)
end

function handlers.verify(ctx, opts)
  local key = opts.public_key_file or os.getenv("CARACAL_MERKLE_PUBLIC_KEY_FILE")
  if not key then error({ usage = "merkle verify needs --public-key-file" }, 0) end
  local report = ctx.manager():session_scope(function(s)
    return merkle.verify(s, { public_key_file = key, digest_file = opts.digest_file })
  end)
  task.emit(opts, report, function() io.write(merkle.format_report(report), "\n") end)
  return report.ok and 0 or 1
end

function M.main(argv, ctx)
  return task.dispatch(argv, ctx, M.usage, SPEC, handlers)
end

return M
