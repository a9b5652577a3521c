-- A network that silently drops packets (nft DROP), in a network
-- namespace this spec makes with its own loopback and its own PostgreSQL,
-- so nothing outside it is touched. Needs root, ip and nft (installed by
-- `make reliability` when missing); otherwise each case is pending with
-- the reason.
--
--   P11: a query in flight when the path goes silent fails within the
--        keepalive bound (2/1/2: about 4 s), and within about ten seconds
--        with Caracal's defaults; with the OS's defaults it is still hung.
--   P10: a connect into a blackhole fails after connect_timeout, with the
--        pool's counters unchanged, and the pool recovers once the path
--        is back.
package.path = "spec/reliability/?.lua;" .. package.path
local H = require "harness"

local PORT = 55432
local NS = "caracal_rel_" .. tostring(math.random(100000, 999999))

local why_not
if not H.is_root() then why_not = "needs root (network namespaces and nft)"
elseif not H.have("ip") then why_not = "needs ip (iproute2)"
elseif not H.have("nft") then why_not = "needs nft (nftables)" end

-- The client: runs inside the namespace with the caracal binary.
local CLIENT = [=[
local mode, port, dir = arg[1], tonumber(arg[2]), arg[3]
local function now() local f = io.open("/proc/uptime") local v = f:read("n") f:close() return v end
local function touch(p) local f = io.open(p, "w") f:write("x") f:close() end
local function exists(p) local f = io.open(p) if f then f:close() return true end return false end
local function wait_for(p) local t0 = now() while not exists(p) and now() - t0 < 60 do caracal.core.sleep(0.05) end end
local cfg = { host = "127.0.0.1", port = port, user = "caracal", database = "caracal", pool_size = 1,
              max_overflow = 0, pool_timeout = 2, connect_timeout = 2 }
if mode == "ka" then
  cfg.keepalives_idle, cfg.keepalives_interval, cfg.keepalives_count, cfg.tcp_user_timeout = 2, 1, 2, 0
elseif mode == "os" then
  cfg.keepalives, cfg.tcp_user_timeout = false, 0
end
local m = require("caracal.db").create_connection_manager(cfg)
local res = { mode = mode }
if mode ~= "connect" then m:execute("select 1") end
touch(dir .. "/ready")
if mode == "connect" then wait_for(dir .. "/rules") end
local t0 = now()
local ok, err = pcall(m.execute, m, mode == "connect" and "select 1" or "select pg_sleep(30)")
res.elapsed, res.ok = now() - t0, ok
if not ok then
  res.sqlstate, res.lost, res.kind = err.sqlstate, err.connection_lost, err.kind
  res.message = tostring(err.message):sub(1, 120)
end
local st = m:get_pool_status()
res.total, res.connecting, res.checked_out = st.total, st.connecting, st.checked_out
touch(dir .. "/failed")
wait_for(dir .. "/go")
local rok = pcall(m.execute, m, "select 1")
res.recovered = rok
local f = io.open(dir .. "/result", "w")
f:write(caracal.json_encode(res))
f:close()
]=]

describe("a silent network (nft DROP in a network namespace)", function()
  local dir, home, ready

  local function ns(cmd) return H.sh("ip netns exec " .. NS .. " " .. cmd) end

  local function rules(on)
    if on then
      return ns("sh -c " .. H.q(table.concat({
        "nft add table inet caracal_fault",
        "nft add chain inet caracal_fault out '{ type filter hook output priority 0; }'",
        "nft add rule inet caracal_fault out tcp dport " .. PORT .. " drop",
        "nft add rule inet caracal_fault out tcp sport " .. PORT .. " drop",
      }, " && ")))
    end
    return ns("nft delete table inet caracal_fault")
  end

  setup(function()
    if why_not then return end
    dir = H.tmpdir()
    home = dir .. "/home"
    H.sh("chmod 755 " .. H.q(dir))
    local out, rc = H.sh("ip netns add " .. NS .. " && ip netns exec " .. NS .. " ip link set lo up")
    if rc ~= 0 then why_not = "cannot make a network namespace: " .. out return end
    out, rc = ns(H.q(H.bin) .. " local start --home " .. H.q(home) .. " --listen 127.0.0.1 --port " .. PORT ..
                 " --fast --json </dev/null")
    if rc ~= 0 then why_not = "cannot start a cluster in the namespace: " .. out return end
    H.write(dir .. "/client.lua", CLIENT)
    ready = true
  end)

  teardown(function()
    if dir then
      pcall(rules, false)
      ns(H.q(H.bin) .. " local destroy --home " .. H.q(home) .. " </dev/null")
      H.sh("ip netns del " .. NS)
      H.sh("rm -rf " .. H.q(dir))
    end
  end)

  -- Run the client in `mode`; returns its result table (nil when it was
  -- still waiting at `hung_after` seconds and had to be stopped).
  local function client(mode, bound, hung_after)
    local run = dir .. "/" .. mode
    H.sh("rm -rf " .. H.q(run) .. " && mkdir -p " .. H.q(run))
    local pid = H.spawn("exec ip netns exec " .. NS .. " " .. H.q(H.bin) .. " " .. H.q(dir .. "/client.lua") .. " " ..
                        mode .. " " .. PORT .. " " .. H.q(run), run .. "/log")
    local t0 = H.now()
    while not H.read(run .. "/ready") do
      assert(H.now() - t0 < 20, "the client did not start: " .. tostring(H.read(run .. "/log")))
      H.sleep(0.05)
    end
    if mode == "connect" then
      rules(true)
      H.write(run .. "/rules", "x")
    else
      H.sleep(1) -- the query is in flight; now the path goes silent
      rules(true)
    end
    local t1 = H.now()
    local limit = hung_after or bound
    while not H.read(run .. "/failed") and H.now() - t1 < limit do H.sleep(0.05) end
    local failed = H.read(run .. "/failed") ~= nil
    rules(false)
    H.write(run .. "/go", "x")
    if not failed then
      H.kill(pid)
      return nil
    end
    assert.is_true(H.wait(pid, 30), "the client did not finish")
    local res = require("caracal.core").json_decode(H.read(run .. "/result") or "null")
    assert.is_table(res, tostring(H.read(run .. "/log")))
    return res
  end

  it("fails a query in flight within the keepalive bound (2/1/2)", function()
    local r = { id = "P11", fault = "nft DROP both ways 1 s into pg_sleep(30); keepalives 2/1/2, tcp_user_timeout 0",
                expected = "connection_lost error after about 4 s (< 8 s); pool recovers once the path is back" }
    if not ready then H.skipped(r, why_not) pending(why_not) return end
    H.check(r, function()
      local res = client("ka", 15)
      assert.is_table(res, "still waiting after 15 s")
      assert.is_false(res.ok)
      assert.is_true(res.lost)
      assert.is_true(res.elapsed >= 2 and res.elapsed < 8, "failed after " .. res.elapsed .. " s")
      assert.equal(0, res.checked_out)
      assert.is_true(res.recovered)
      r.observed = string.format("lost after %.1f s; recovered", res.elapsed)
    end)
  end)

  it("fails a query in flight within about ten seconds with Caracal's defaults", function()
    local r = { id = "P11", fault = "nft DROP 1 s into pg_sleep(30); defaults (keepalives 5/2/3, tcp_user_timeout 10 s)",
                expected = "connection_lost error in about 10 s (< 15 s)" }
    if not ready then H.skipped(r, why_not) pending(why_not) return end
    H.check(r, function()
      local res = client("defaults", 20)
      assert.is_table(res, "still waiting after 20 s")
      assert.is_true(res.lost)
      assert.is_true(res.elapsed < 15, "failed after " .. res.elapsed .. " s")
      assert.is_true(res.recovered)
      r.observed = string.format("lost after %.1f s; recovered", res.elapsed)
    end)
  end)

  it("is still hung after 6 s with the OS's own settings (why Caracal sets them)", function()
    local r = { id = "P11", fault = "nft DROP 1 s into pg_sleep(30); keepalives off, no tcp_user_timeout",
                expected = "still waiting 6 s later (the OS notices after hours)" }
    if not ready then H.skipped(r, why_not) pending(why_not) return end
    H.check(r, function()
      local res = client("os", 20, 6)
      assert.is_nil(res, "it failed by itself")
      r.observed = "still waiting at 6 s (stopped)"
    end)
  end)

  it("fails a connect into the blackhole after connect_timeout, counters unchanged, then recovers", function()
    local r = { id = "P10", fault = "nft DROP on the port, then a checkout (connect_timeout 2 s, pool_timeout 2 s)",
                expected = "connect error after about 2 s (< 4.5 s); no slot leaked; works once the path is back" }
    if not ready then H.skipped(r, why_not) pending(why_not) return end
    H.check(r, function()
      local res = client("connect", 15)
      assert.is_table(res)
      assert.is_false(res.ok)
      assert.equal("connect", res.kind)
      assert.is_true(res.elapsed >= 1.9 and res.elapsed < 4.5, "failed after " .. res.elapsed .. " s")
      assert.same({ 0, 0, 0 }, { res.total, res.connecting, res.checked_out })
      assert.is_true(res.recovered)
      r.observed = string.format("connect error after %.1f s; counters 0; recovered", res.elapsed)
    end)
  end)
end)
