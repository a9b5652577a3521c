--- Partitioned ledgers: `ledger_events` and `authority_ledger_events`
-- become tables partitioned by month on "timestamp" (RANGE, UTC months),
-- so a ledger that grows without bound stays cheap to query by time and
-- to maintain (README "Scaling").
--
-- What stays exactly as it was: every row (copied with INSERT ... SELECT,
-- event ids, timestamps and merkle_root_id unchanged, so every Merkle
-- batch still verifies), the columns, defaults and CHECK constraints (the
-- new table is made LIKE the old one), the sequences (now owned by the
-- new tables), every index by name and purpose, the foreign keys by name
-- (merkle_root_id keeps ON DELETE SET NULL, which the guard turns into a
-- refusal to delete a referenced root, as in revision 2), the table and
-- column privileges, and the append-only rules: the row trigger on the
-- partitioned table is cloned to every partition, and the TRUNCATE
-- trigger, which PostgreSQL does not clone, is put on every partition too.
--
-- What changes: the primary key must hold the partition key, so it is
-- (event_id, "timestamp"); event ids stay unique because the sequence
-- hands them out (a constraint across partitions is not possible). Each
-- ledger gets one partition per month from its oldest row's month to
-- three months past the newest row's (or today's), at most 600 months,
-- plus a DEFAULT partition for anything outside. The guard function names
-- the ledger (not the partition) in its messages, so errors read as
-- before. `caracal_ledger_partition(ledger, month)` makes one month's
-- partition (idempotent; rows already in the DEFAULT partition for that
-- month are moved into it); `caracal partition create` calls it ahead of
-- time (lua/caracal/partitions.lua).
--
-- `down` turns both back into plain tables with revision 2's keys,
-- indexes, triggers and guard function, keeping every row. Both ways run
-- in one transaction and hold an ACCESS EXCLUSIVE lock on the ledgers
-- while rows are copied: plan the upgrade for a quiet moment (a million
-- events take seconds to tens of seconds).

-- The ledgers and the column their guard lets batching set once.
local LEDGERS = {
  { "ledger_events", "merkle_root_id" },
  { "authority_ledger_events", "merkle_root_id" },
}

-- How far a new partitioned ledger reaches: months past the newest row
-- (or the current month), and the most months it is given partitions for.
local MONTHS_AHEAD = 3
local MAX_MONTHS = 600

-- Revision 2's guard, restored exactly by `down`.
local GUARD_V2 = [[
CREATE OR REPLACE FUNCTION caracal_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $guard$
DECLARE
  batch_column text := CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0] END;
  detail text;
BEGIN
  IF TG_OP = 'UPDATE' AND batch_column IS NOT NULL THEN
    IF (to_jsonb(OLD) ->> batch_column) IS NULL
       AND (to_jsonb(NEW) ->> batch_column) IS NOT NULL
       AND (to_jsonb(NEW) - batch_column) = (to_jsonb(OLD) - batch_column) THEN
      RETURN NEW;
    END IF;
    detail := CASE WHEN (to_jsonb(OLD) ->> batch_column) IS NOT NULL
                   THEN batch_column || ' is already set'
                   ELSE 'an update may only set a NULL ' || batch_column || ' and change nothing else' END;
    RAISE EXCEPTION '% is append-only: UPDATE is not allowed (only setting % once)', TG_TABLE_NAME, batch_column
      USING ERRCODE = 'CA001', DETAIL = detail,
            HINT = 'ledger rows are never changed or removed; record a correcting event instead';
  END IF;
  RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'CA001',
          HINT = 'ledger rows are never changed or removed; record a correcting event instead';
END
$guard$]]

-- The same rules; a partition's row reports its ledger's name (and the
-- partition in DETAIL), so messages read as they did on a plain table.
local GUARD_V3 = [[
CREATE OR REPLACE FUNCTION caracal_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $guard$
DECLARE
  batch_column text := CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0] END;
  ledger text := TG_TABLE_NAME;
  part_detail text;
  detail text;
BEGIN
  IF TG_OP = 'UPDATE' AND batch_column IS NOT NULL THEN
    IF (to_jsonb(OLD) ->> batch_column) IS NULL
       AND (to_jsonb(NEW) ->> batch_column) IS NOT NULL
       AND (to_jsonb(NEW) - batch_column) = (to_jsonb(OLD) - batch_column) THEN
      RETURN NEW;
    END IF;
  END IF;
  SELECT c.relname INTO ledger FROM pg_class c WHERE c.oid = coalesce(pg_partition_root(TG_RELID), TG_RELID);
  IF ledger <> TG_TABLE_NAME THEN part_detail := 'partition ' || TG_TABLE_NAME; END IF;
  IF TG_OP = 'UPDATE' AND batch_column IS NOT NULL THEN
    detail := CASE WHEN (to_jsonb(OLD) ->> batch_column) IS NOT NULL
                   THEN batch_column || ' is already set'
                   ELSE 'an update may only set a NULL ' || batch_column || ' and change nothing else' END;
    RAISE EXCEPTION '% is append-only: UPDATE is not allowed (only setting % once)', ledger, batch_column
      USING ERRCODE = 'CA001', DETAIL = detail,
            HINT = 'ledger rows are never changed or removed; record a correcting event instead';
  END IF;
  IF part_detail IS NOT NULL THEN
    RAISE EXCEPTION '% is append-only: % is not allowed', ledger, TG_OP
      USING ERRCODE = 'CA001', DETAIL = part_detail,
            HINT = 'ledger rows are never changed or removed; record a correcting event instead';
  END IF;
  RAISE EXCEPTION '% is append-only: % is not allowed', ledger, TG_OP
    USING ERRCODE = 'CA001',
          HINT = 'ledger rows are never changed or removed; record a correcting event instead';
END
$guard$]]

-- One month's partition of a partitioned ledger: `<ledger>_YYYY_MM`, for
-- ["timestamp"] from the month's first instant (UTC) to the next month's.
-- Idempotent. Rows the DEFAULT partition already holds for that month are
-- moved into the new partition unchanged (its guard is lifted for that one
-- DELETE, in this transaction), since PostgreSQL refuses to add a
-- partition whose rows sit in the default one. Needs the ledger's owner.
local PARTITION_FUNCTION = [[
CREATE FUNCTION caracal_ledger_partition(ledger regclass, month date,
    OUT partition_name text, OUT created boolean, OUT moved bigint)
LANGUAGE plpgsql AS $part$
DECLARE
  schema_name text;
  ledger_name text;
  first_day timestamp := date_trunc('month', month::timestamp);
  lo text;
  hi text;
  target text;
  default_part regclass;
  guard_state "char";
BEGIN
  SELECT n.nspname, c.relname INTO schema_name, ledger_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = ledger AND c.relkind = 'p';
  IF ledger_name IS NULL THEN
    RAISE EXCEPTION '% is not a partitioned table', ledger USING ERRCODE = '42809',
      HINT = 'upgrade the schema first: caracal db upgrade head';
  END IF;
  partition_name := ledger_name || '_' || to_char(first_day, 'YYYY_MM');
  created := false;
  moved := 0;
  IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = partition_name AND n.nspname = schema_name) THEN
    RETURN;
  END IF;
  -- Bounds written in UTC whatever the session's TimeZone and DateStyle.
  lo := to_char(first_day, 'YYYY-MM-DD HH24:MI:SS') || '+00';
  hi := to_char(first_day + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00';
  target := format('%I.%I', schema_name, partition_name);
  SELECT i.inhrelid::regclass INTO default_part
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
   WHERE i.inhparent = ledger AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
  IF default_part IS NOT NULL THEN
    EXECUTE format('SELECT count(*) FROM %s WHERE "timestamp" >= %L AND "timestamp" < %L', default_part, lo, hi)
      INTO moved;
  END IF;
  IF moved > 0 THEN
    EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', target, ledger);
    EXECUTE format('INSERT INTO %s SELECT * FROM %s WHERE "timestamp" >= %L AND "timestamp" < %L',
                   target, default_part, lo, hi);
    SELECT t.tgenabled INTO guard_state FROM pg_trigger t
     WHERE t.tgrelid = default_part AND t.tgname = ledger_name || '_append_only';
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', default_part, ledger_name || '_append_only');
    EXECUTE format('DELETE FROM %s WHERE "timestamp" >= %L AND "timestamp" < %L', default_part, lo, hi);
    EXECUTE format('ALTER TABLE %s ENABLE %s TRIGGER %I', default_part,
                   CASE guard_state WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END,
                   ledger_name || '_append_only');
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)', ledger, target, lo, hi);
  ELSE
    EXECUTE format('CREATE TABLE %s PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', target, ledger, lo, hi);
  END IF;
  -- TRUNCATE triggers are not cloned to partitions: each gets its own,
  -- firing as the ledger's does (ENABLE ALWAYS after caracal.roles.setup).
  EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s FOR EACH STATEMENT ' ||
                 'EXECUTE FUNCTION caracal_ledger_append_only()', ledger_name || '_no_truncate', target);
  IF (SELECT t.tgenabled FROM pg_trigger t WHERE t.tgrelid = ledger AND t.tgname = ledger_name || '_no_truncate')
     = 'A' THEN
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, ledger_name || '_no_truncate');
  END IF;
  created := true;
END
$part$]]

-- Fill ${name} placeholders with already-quoted SQL.
local function fill(template, values)
  return (template:gsub("%${([%w_]+)}", function(k)
    local v = values[k]
    if v == nil then error("0003: no value for ${" .. k .. "}", 0) end
    return v
  end))
end

-- Replace ledger T by a new table of the other kind, keeping everything.
-- `partitioned`: the new table is partitioned by month (up), else plain
-- (down). The old table is renamed out of the way, its indexes and
-- foreign keys are remembered (by definition, names kept), the new table
-- is made LIKE it (columns, defaults, CHECKs), takes over the sequence,
-- gets the rows and the grants, the old one is dropped, then keys,
-- indexes, foreign keys and the guard triggers are made on the new one
-- (after the copy: building indexes once is faster than maintaining them).
local SWAP = [[
DO $swap$
DECLARE
  schema_name text;
  old_q text;
  new_q text;
  r record;
  stmt text;
  later text[] := '{}';
  first_month date;
  last_month date;
  m date;
  append_only_state "char";
  no_truncate_state "char";
BEGIN
  SELECT n.nspname INTO schema_name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = ${ledger_lit}::regclass;
  IF (SELECT c.relkind FROM pg_class c WHERE c.oid = ${ledger_lit}::regclass) <> ${old_kind} THEN
    RAISE EXCEPTION '% is not the kind of table this revision expects', ${ledger_lit};
  END IF;
  -- How the guards fire (ENABLE ALWAYS after caracal.roles.setup): kept.
  SELECT t.tgenabled INTO append_only_state FROM pg_trigger t
   WHERE t.tgrelid = ${ledger_lit}::regclass AND t.tgname = ${append_only_lit};
  SELECT t.tgenabled INTO no_truncate_state FROM pg_trigger t
   WHERE t.tgrelid = ${ledger_lit}::regclass AND t.tgname = ${no_truncate_lit};
  ALTER TABLE ${ledger} RENAME TO ${old};
  old_q := format('%I.%I', schema_name, ${old_lit});
  new_q := format('%I.%I', schema_name, ${ledger_lit});

  -- Triggers other than the guard's would be lost: refuse to guess.
  FOR r IN SELECT t.tgname FROM pg_trigger t
            WHERE t.tgrelid = old_q::regclass AND NOT t.tgisinternal
              AND t.tgname NOT IN (${append_only_lit}, ${no_truncate_lit}) LOOP
    RAISE EXCEPTION '% has a trigger this revision does not know: %', ${ledger_lit}, r.tgname
      USING HINT = 'drop it before this migration and create it again afterwards';
  END LOOP;
  -- Indexes that no constraint owns, and foreign keys: made again by definition.
  FOR r IN SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
            WHERE i.indrelid = old_q::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                AND k.conrelid = i.indrelid) LOOP
    stmt := replace(replace(r.def, ' ON ONLY ' || old_q || ' USING ', ' ON ' || new_q || ' USING '),
                    ' ON ' || old_q || ' USING ', ' ON ' || new_q || ' USING ');
    IF stmt = r.def THEN RAISE EXCEPTION 'cannot move index definition: %', r.def; END IF;
    later := later || stmt;
  END LOOP;
  FOR r IN SELECT k.conname, pg_get_constraintdef(k.oid) AS def FROM pg_constraint k
            WHERE k.conrelid = old_q::regclass AND k.contype = 'f' ORDER BY k.conname LOOP
    later := later || format('ALTER TABLE %s ADD CONSTRAINT %I %s', new_q, r.conname, r.def);
  END LOOP;

  CREATE TABLE ${ledger} (LIKE ${old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
    INCLUDING COMMENTS INCLUDING STATISTICS) ${partition_by};
  ALTER SEQUENCE ${sequence} OWNED BY ${ledger}.event_id;
${make_partitions}
  INSERT INTO ${ledger} SELECT * FROM ${old} ${order_by};

  -- Table and column privileges.
  FOR r IN SELECT a.grantee, a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a
            WHERE c.oid = old_q::regclass AND a.grantee <> c.relowner LOOP
    EXECUTE format('GRANT %s ON %s TO %s%s', r.privilege_type, new_q,
      CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END,
      CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
  END LOOP;
  FOR r IN SELECT att.attname, a.grantee, a.privilege_type, a.is_grantable
             FROM pg_attribute att, aclexplode(att.attacl) a
            WHERE att.attrelid = old_q::regclass AND att.attnum > 0 AND NOT att.attisdropped LOOP
    EXECUTE format('GRANT %s (%I) ON %s TO %s%s', r.privilege_type, r.attname, new_q,
      CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END,
      CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
  END LOOP;

  DROP TABLE ${old};
  ALTER TABLE ${ledger} ADD CONSTRAINT ${pkey} PRIMARY KEY (${pkey_columns});
  FOREACH stmt IN ARRAY later LOOP
    EXECUTE stmt;
  END LOOP;
  CREATE TRIGGER ${append_only} BEFORE UPDATE OR DELETE ON ${ledger}
    FOR EACH ROW EXECUTE FUNCTION caracal_ledger_append_only(${batch_lit});
  CREATE TRIGGER ${no_truncate} BEFORE TRUNCATE ON ${ledger}
    FOR EACH STATEMENT EXECUTE FUNCTION caracal_ledger_append_only();
  IF append_only_state = 'A' THEN
    ALTER TABLE ${ledger} ENABLE ALWAYS TRIGGER ${append_only}; -- cloned triggers follow
  END IF;
  IF no_truncate_state = 'A' THEN
    ALTER TABLE ${ledger} ENABLE ALWAYS TRIGGER ${no_truncate};
    FOR r IN SELECT i.inhrelid::regclass AS part FROM pg_inherits i WHERE i.inhparent = new_q::regclass LOOP
      EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.part, ${no_truncate_lit});
    END LOOP;
  END IF;
  ANALYZE ${ledger};
END
$swap$]]

-- The partitions of a new partitioned ledger (inside SWAP, before the copy).
local MAKE_PARTITIONS = [[
  SELECT date_trunc('month', least(min("timestamp"), now()) AT TIME ZONE 'UTC')::date,
         date_trunc('month', greatest(max("timestamp"), now()) AT TIME ZONE 'UTC')::date
    INTO first_month, last_month FROM ${old};
  last_month := (last_month + interval '${ahead} months')::date;
  first_month := greatest(first_month, (last_month - interval '${max_months} months')::date);
  m := first_month;
  WHILE m <= last_month LOOP
    PERFORM caracal_ledger_partition(${ledger_lit}::regclass, m);
    m := (m + interval '1 month')::date;
  END LOOP;
  CREATE TABLE ${default_part} PARTITION OF ${ledger} DEFAULT;
  CREATE TRIGGER ${no_truncate} BEFORE TRUNCATE ON ${default_part}
    FOR EACH STATEMENT EXECUTE FUNCTION caracal_ledger_append_only();]]

local function swap(op, ledger, batch, partitioned)
  local old = ledger .. (partitioned and "_unpartitioned" or "_partitioned")
  local values = {
    ledger = op.ident(ledger), ledger_lit = op.literal(ledger), old = op.ident(old), old_lit = op.literal(old),
    old_kind = op.literal(partitioned and "r" or "p"),
    sequence = op.ident(ledger .. "_event_id_seq"), pkey = op.ident(ledger .. "_pkey"),
    append_only = op.ident(ledger .. "_append_only"), append_only_lit = op.literal(ledger .. "_append_only"),
    no_truncate = op.ident(ledger .. "_no_truncate"), no_truncate_lit = op.literal(ledger .. "_no_truncate"),
    batch_lit = op.literal(batch), default_part = op.ident(ledger .. "_default"),
    ahead = tostring(MONTHS_AHEAD), max_months = tostring(MAX_MONTHS),
  }
  if partitioned then
    values.partition_by = 'PARTITION BY RANGE ("timestamp")'
    values.make_partitions = fill(MAKE_PARTITIONS, values)
    values.order_by = ""
    values.pkey_columns = 'event_id, "timestamp"'
  else
    values.partition_by = ""
    values.make_partitions = ""
    values.order_by = "ORDER BY event_id"
    values.pkey_columns = "event_id"
  end
  op.execute(fill(SWAP, values))
end

return {
  revision = "c3b8f1d27a94",
  down_revision = "a7d4e2c91f06",
  message = "partitioned ledgers",

  up = function(op)
    op.execute(GUARD_V3)
    op.execute(PARTITION_FUNCTION)
    for _, l in ipairs(LEDGERS) do swap(op, l[1], l[2], true) end
  end,

  down = function(op)
    for i = #LEDGERS, 1, -1 do swap(op, LEDGERS[i][1], LEDGERS[i][2], false) end
    op.execute("DROP FUNCTION caracal_ledger_partition(regclass, date)")
    op.execute(GUARD_V2)
  end,
}
