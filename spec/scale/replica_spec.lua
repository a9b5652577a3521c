-- Streaming replicas and failover, on loopback: a primary and a standby
-- made with pg_basebackup (two local clusters the spec starts itself),
-- synchronous replication so an acknowledged commit is on the standby.
-- Read-only sessions go to the standby, the rest to the primary; when the
-- primary stops abruptly and the standby is promoted, a writer loop that
-- runs all along recovers by itself and no acknowledged write is lost.
package.path = "spec/scale/?.lua;" .. package.path
local core = require "caracal.core"
local db = require "caracal.db"
local localdb = require "caracal.localdb"
local H = require "scale_helpers"

local function url(port) return "postgresql://caracal@127.0.0.1:" .. port .. "/caracal" end

describe("a primary and a streaming standby", function()
  local base, primary, standby, p1, p2, m

  setup(function()
    base = H.tmpdir("caracal-replicas")
    p1 = H.free_port(55700)
    primary = localdb.start({ home = base .. "/primary", port = p1, listen = "127.0.0.1", fast = true, quiet = true })
    H.admin(url(p1), "create table scale_writes (n bigint primary key, at timestamptz not null default now())")
    -- The standby: a cluster of its own (made by localdb, so it has its
    -- home, port and socket), its data replaced by a base backup of the
    -- primary with a standby.signal and primary_conninfo (-R).
    p2 = H.free_port(p1 + 1)
    local home2 = base .. "/standby"
    local made = localdb.start({ home = home2, port = p2, listen = "127.0.0.1", fast = true, quiet = true })
    localdb.stop({ home = home2 })
    H.must(H.as(made.user, "rm -rf " .. H.q(made.data)))
    H.must(H.as(made.user, H.q(H.bindir(primary.data) .. "/pg_basebackup") .. " -D " .. H.q(made.data) ..
      " -R -X stream -c fast -h 127.0.0.1 -p " .. p1 .. " -U caracal"))
    standby = localdb.start({ home = home2, port = p2, listen = "127.0.0.1", fast = true, quiet = true })
    -- Synchronous: COMMIT returns once the standby has applied it.
    H.admin(url(p1), "alter system set synchronous_standby_names = '*'")
    H.admin(url(p1), "alter system set synchronous_commit = 'remote_apply'")
    H.admin(url(p1), "select pg_reload_conf()")
    H.wait("the standby to replicate synchronously", 30, function()
      local rows = H.admin(url(p1), "select sync_state from pg_stat_replication")
      return rows[1] and rows[1].sync_state == "sync"
    end)
    m = db.create_connection_manager({
      host = "127.0.0.1,127.0.0.1", port = p1 .. "," .. p2, database = "caracal", user = "caracal",
      replicas = { url(p2) }, pool_size = 2, max_overflow = 2, pool_timeout = 10,
      -- An idle connection that died with the old primary is replaced
      -- before it is handed out, so after a failover no request fails on one.
      pool_pre_ping = true,
    })
  end)

  teardown(function()
    if m then m:close() end
    if base then
      pcall(localdb.destroy, { home = base .. "/standby" })
      pcall(localdb.destroy, { home = base .. "/primary" })
      H.sh("rm -rf " .. H.q(base))
    end
  end)

  local function where(opts)
    return m:session_scope(function(s)
      return s:first("select pg_is_in_recovery() as standby, inet_server_port() as port")
    end, opts)
  end

  it("serves read-only sessions from the standby and writes from the primary", function()
    assert.equal("read-write", m.config:conninfo().target_session_attrs)
    assert.equal("prefer-standby", m.read_config.target_session_attrs)
    assert.same({ false, p1 }, { where().standby, where().port })
    m:session_scope(function(s) s:execute("insert into scale_writes (n) values (-1)") end)
    local r = m:session_scope(function(s)
      return s:first("select pg_is_in_recovery() as standby, inet_server_port() as port, " ..
        "(select count(*) from scale_writes where n = -1) as seen")
    end, { readonly = true })
    assert.same({ true, p2, 1 }, { r.standby, r.port, r.seen })
    -- A read that must see the latest commit can ask for the primary.
    assert.same({ false, p1 }, { where({ readonly = true, replica = false }).standby,
                                 where({ readonly = true, replica = false }).port })
    -- A write in a read-only session is refused by the standby.
    local ok, err = pcall(m.session_scope, m, function(s) s:execute("insert into scale_writes (n) values (-2)") end,
      { readonly = true })
    assert.is_false(ok)
    assert.equal("25006", err.sqlstate)
    assert.is_true(m:get_pool_status("read").connects >= 1)
    assert.is_true(m:health_check("read"))
    -- The command line: --read-only uses the replicas (a config file names them).
    local cfg = base .. "/caracal.config.lua"
    local f = assert(io.open(cfg, "w"))
    f:write(string.format("return { host = '127.0.0.1,127.0.0.1', port = '%d,%d', database = 'caracal', " ..
      "user = 'caracal', replicas = { '%s' } }\n", p1, p2, url(p2)))
    f:close()
    local code = "print(db:session_scope(function(s) return s:scalar('select inet_server_port()') end))"
    local out, rc = H.sh(H.q(H.bin) .. " --config " .. H.q(cfg) .. " --read-only -e " .. H.q(code))
    assert.equal(0, rc, out)
    assert.equal(tostring(p2), out:match("^(%d+)"))
    out, rc = H.sh(H.q(H.bin) .. " --config " .. H.q(cfg) .. " -e " .. H.q(code))
    assert.equal(0, rc, out)
    assert.equal(tostring(p1), out:match("^(%d+)"))
  end)

  it("after the primary stops and the standby is promoted, a running writer recovers and loses no acknowledged write", function()
    local dir = H.tmpdir("caracal-writer")
    local out, stop = dir .. "/writes", dir .. "/stop"
    local multi = "postgresql://caracal@127.0.0.1:" .. p1 .. ",127.0.0.1:" .. p2 .. "/caracal"
    H.must(H.q(H.bin) .. " --url " .. H.q(multi) .. " spec/scale/writer.lua " .. H.q(out) .. " " .. H.q(stop) ..
      " 90 >" .. H.q(dir .. "/log") .. " 2>&1 &")
    local function count(kind)
      local n = 0
      for _, l in ipairs(H.lines(out)) do if l:sub(1, #kind) == kind then n = n + 1 end end
      return n
    end
    H.wait("the writer's first 100 acknowledged writes", 30, function() return count("ack ") >= 100 end)

    -- Abrupt: no checkpoint, no goodbye to the clients.
    localdb.stop({ home = base .. "/primary", mode = "immediate" })
    H.wait("the writer to notice", 15, function() return count("fail ") >= 1 end)
    H.must(H.as(standby.user, H.q(H.bindir(standby.data) .. "/pg_ctl") .. " promote -w -t 60 -D " ..
      H.q(standby.data)))
    local before = count("ack ")
    H.wait("writes to resume on the new primary", 30, function() return count("ack ") >= before + 50 end)
    H.must("touch " .. H.q(stop))
    H.wait("the writer to finish", 30, function()
      local l = H.lines(out)
      return l[#l] and l[#l]:match("^done ")
    end)

    local acked, failed, outcomes = {}, 0, {}
    for _, l in ipairs(H.lines(out)) do
      local n = l:match("^ack (%d+)$")
      if n then acked[#acked + 1] = math.tointeger(tonumber(n)) end
      local o = l:match("^fail %d+ (%S+)")
      if o then
        failed = failed + 1
        outcomes[o] = true
      end
    end
    assert.is_true(failed >= 1)
    -- Every failure says how it failed: lost during COMMIT ("unknown"), or
    -- a SQLSTATE (no server to connect to, the connection lost).
    for o in pairs(outcomes) do assert.is_true(o == "unknown" or o:match("^%w%w%w%w%w$") ~= nil, o) end
    -- On the new primary: every acknowledged write, and nothing beyond the
    -- writes whose outcome was not known.
    local n2 = db.create_connection_manager({ url = url(p2), pool_size = 1 })
    local r = n2:execute("select count(*) as total, count(*) filter (where n = any($1::int8[])) as acked, " ..
      "pg_is_in_recovery() as standby from scale_writes where n > 0", core.json_array(acked))[1]
    n2:close()
    assert.is_false(r.standby)
    assert.equal(#acked, r.acked)
    assert.is_true(r.total >= #acked and r.total <= #acked + failed,
      string.format("%d rows, %d acknowledged, %d failed", r.total, #acked, failed))
    -- The manager from before the failover reads and writes again too.
    assert.same({ false, p2 }, { where().standby, where().port })
    assert.equal(p2, where({ readonly = true }).port)
    H.sh("rm -rf " .. H.q(dir))
  end)
end)
