-- A full disk on the server: a table in a tablespace on an 8 MB tmpfs
-- (WAL stays on the data disk: ENOSPC on WAL is a PANIC, not this test).
-- Needs root (mount); otherwise pending with the reason. The tablespace is
-- dropped before the tmpfs is unmounted (unmounting first breaks crash
-- recovery of the cluster).
package.path = "spec/reliability/?.lua;" .. package.path
local localdb = require "caracal.localdb"
local testdb = require "testdb"
local H = require "harness"

local why_not
if not H.is_root() then why_not = "needs root (mount -t tmpfs)"
elseif not H.have("mount") then why_not = "needs mount" end

describe("a full disk on the server", function()
  local dir, mnt, space, d

  setup(function()
    if why_not then return end
    dir = H.tmpdir()
    mnt = dir .. "/tiny"
    H.sh("chmod 755 " .. H.q(dir) .. " && mkdir -p " .. H.q(mnt))
    local out, rc = H.sh("mount -t tmpfs -o size=8m,mode=0700 tmpfs " .. H.q(mnt))
    if rc ~= 0 then why_not = "cannot mount a tmpfs: " .. out; H.sh("rm -rf " .. H.q(dir)); dir = nil return end
    local data = localdb.status({ home = testdb.home }).data
    local owner = (H.sh("stat -c %U " .. H.q(data))):gsub("%s+$", "")
    H.sh("chown " .. H.q(owner) .. " " .. H.q(mnt))
    space = "tiny_" .. tostring(math.random(100000, 999999))
    testdb.admin("CREATE TABLESPACE " .. space .. " LOCATION '" .. mnt .. "'")
    d = testdb.fresh_database("disk", { pool_size = 2, max_overflow = 0 })
  end)

  teardown(function()
    if d then d.drop() end
    if space then pcall(testdb.admin, "DROP TABLESPACE IF EXISTS " .. space) end
    if dir then
      H.sh("umount " .. H.q(mnt))
      H.sh("rm -rf " .. H.q(dir))
    end
  end)

  it("gives 53100 with a clear message, writes nothing half, and the server stays up", function()
    local r = { id = "disk", fault = "inserting 100-row batches into a table on an 8 MB tmpfs tablespace until it is full",
                expected = "53100 'No space left on device'; rows = acknowledged batches x 100; the connection and server usable" }
    if why_not then H.skipped(r, why_not) pending(why_not) return end
    H.check(r, function()
      local m = d.manager
      m:execute("create table disk_t(id int, pad text) tablespace " .. space)
      local L = H.ledger()
      local full
      for batch = 1, 1000 do
        local ok, err = pcall(m.session_scope, m, function(s)
          s:execute("insert into disk_t select g, repeat(md5(g::text), 30) from generate_series($1::int, $2::int) g",
                    batch * 100, batch * 100 + 99)
        end)
        L:note(batch, ok, err)
        if not ok then full = err break end
      end
      assert.is_table(full, "the disk never filled up")
      assert.equal("53100", full.sqlstate)
      assert.matches("No space left on device", full.message, 1, true)
      assert.is_false(full.connection_lost)
      -- nothing half-written: whole batches only, exactly the acknowledged ones
      local acked = #L.acked
      local rows = m:execute("select count(*) as n, count(distinct id / 100) as b from disk_t")[1]
      assert.equal(acked * 100, rows.n)
      assert.equal(acked, rows.b)
      local v = L:verify(m, "disk_t", "id / 100")
      assert.same({ 0, 0 }, { v.lost, v.phantom })
      -- the server and the connection are fine, and space comes back
      assert.equal(1, m:execute("select 1 as v")[1].v)
      assert.equal(0, m:get_pool_status().discards)
      m:execute("drop table disk_t")
      m:execute("create table disk_t(id int) tablespace " .. space)
      m:execute("insert into disk_t values (1)")
      m:execute("drop table disk_t")
      r.observed = string.format("53100 after %d batches; %d rows = %d x 100; server and connection fine",
                                 acked, rows.n, acked)
      r.rows = rows.n
    end)
  end)
end)
