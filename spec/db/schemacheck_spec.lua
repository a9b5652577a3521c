-- The models checked against a live database's catalog.
local schemacheck = require "caracal.schemacheck"
local testdb = require "testdb"

describe("schema check against the models", function()
  local d

  setup(function() d = testdb.fresh_database("schk", { migrate = "head" }) end)
  teardown(function() d.drop() end)

  local function problems()
    return d.manager:session_scope(function(s) return schemacheck.check(s) end)
  end

  it("finds nothing at head", function()
    assert.same({}, problems())
  end)

  it("names a changed type, a changed nullability, a missing and an unknown required column", function()
    local ok, err = pcall(d.manager.session_scope, d.manager, function(s)
      s:execute_script([[
        ALTER TABLE principals ALTER COLUMN owner TYPE VARCHAR(100);
        ALTER TABLE principals ALTER COLUMN public_key_pem SET NOT NULL;
        ALTER TABLE ledger_snapshots DROP COLUMN merkle_root;
        ALTER TABLE audit_logs ADD COLUMN shard INTEGER NOT NULL;]])
      local found = {}
      for _, p in ipairs(schemacheck.check(s)) do found[#found + 1] = p.message end
      assert.same({
        "audit_logs.shard is NOT NULL without a default and unknown to model AuditLog: inserts will fail",
        "ledger_snapshots.merkle_root is missing (model LedgerSnapshot.merkle_root)",
        "principals.owner is VARCHAR(100) in the database, VARCHAR(255) in the model",
        "principals.public_key_pem is NOT NULL in the database, NULL in the model",
      }, found)
      error("undo") -- roll the alterations back
    end)
    assert.is_false(ok)
    assert.matches("undo", err)
    assert.same({}, problems())
  end)

  it("names a missing table", function()
    local empty = testdb.fresh_database("schk_empty")
    local found = empty.manager:session_scope(function(s) return schemacheck.check(s) end)
    empty.drop()
    assert.equal(8, #found)
    assert.equal("table principals (model Principal) does not exist", found[8].message)
  end)
end)
