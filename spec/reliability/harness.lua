--- What the fault and bad-input specs share: the report file, the
-- misbehaving proxy (proxy.c), background processes, a wall clock, a
-- ledger of acknowledged writes to check for loss, and root-only helpers
-- (network namespaces, nft, tmpfs).
--
-- Specs under spec/db and spec/host load it with
--    package.path = "spec/reliability/?.lua;" .. package.path
-- (busted runs from the repository root).
local core = require "caracal.core"

local H = {}

H.root = os.getenv("CARACAL_ROOT") or "."
H.bin = os.getenv("CARACAL_BIN") or (H.root .. "/build/caracal")
H.build = H.bin:match("^(.*)/[^/]+$") or (H.root .. "/build")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
H.q = q

--- Run a shell command; returns its output (stdout and stderr) and exit code.
function H.sh(cmd)
  local p = io.popen("( " .. cmd .. " ) 2>&1; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc
end

--- Wall-clock seconds (CLOCK_MONOTONIC through /proc/uptime: 10 ms steps).
function H.now()
  local f = io.open("/proc/uptime", "r")
  if not f then return os.time() end
  local v = tonumber(f:read("n"))
  f:close()
  return v
end

function H.sleep(s) core.sleep(s) end

function H.is_root()
  local out = H.sh("id -u")
  return out:match("^0%s*$") ~= nil
end

function H.have(tool)
  local _, rc = H.sh("command -v " .. q(tool) .. " >/dev/null")
  return rc == 0
end

--- Append one record to the reliability report (a JSON line in the file
-- named by CARACAL_RELIABILITY_REPORT; nothing when it is unset).
-- @tparam table r `id` (reliability.md case or a short name), `fault`
-- (the fault or input), `expected`, `observed`, `rows` (rows checked for
-- loss, or nil), `ok` (boolean)
function H.record(r)
  local path = os.getenv("CARACAL_RELIABILITY_REPORT")
  if not path or path == "" then return end
  local f = io.open(path, "a")
  if not f then return end
  f:write(core.json_encode({
    id = r.id or "", fault = r.fault or "", expected = r.expected or "", observed = r.observed or "",
    rows = r.rows or core.null, ok = r.ok ~= false, suite = r.suite or "",
  }), "\n")
  f:close()
end

--- Run `fn`, and record the outcome: `r.observed` may be a function of
-- what fn returned; a failure is recorded with its message and re-raised.
function H.check(r, fn)
  local res = table.pack(pcall(fn))
  if res[1] then
    local obs = r.observed
    if type(obs) == "function" then obs = obs(table.unpack(res, 2, res.n)) end
    H.record({ id = r.id, fault = r.fault, expected = r.expected, observed = obs or "as expected",
               rows = r.rows_fn and r.rows_fn(table.unpack(res, 2, res.n)) or r.rows, ok = true })
    return table.unpack(res, 2, res.n)
  end
  local msg = tostring(res[2]):gsub("\n.*", "")
  H.record({ id = r.id, fault = r.fault, expected = r.expected, observed = "FAILED: " .. msg:sub(1, 200),
             rows = r.rows, ok = false })
  error(res[2], 0)
end

--- Record a case that was skipped (and why), for the report.
function H.skipped(r, why)
  H.record({ id = r.id, fault = r.fault, expected = r.expected, observed = "skipped: " .. why, ok = true })
end

---------------------------------------------------------------------------
-- Background processes
---------------------------------------------------------------------------

--- Start `cmd` in the background; returns its pid. Output goes to `log`
-- (default /dev/null).
function H.spawn(cmd, log)
  local out = H.sh("( " .. cmd .. " ) >" .. q(log or "/dev/null") .. " 2>&1 </dev/null & echo $!")
  return tonumber(out:match("(%d+)%s*$"))
end

function H.alive(pid)
  local _, rc = H.sh("kill -0 " .. pid .. " 2>/dev/null")
  return rc == 0
end

--- Wait up to `timeout` seconds for pid to exit; true when it did.
function H.wait(pid, timeout)
  local t0 = H.now()
  while H.alive(pid) do
    if H.now() - t0 > (timeout or 30) then return false end
    H.sleep(0.05)
  end
  return true
end

function H.kill(pid)
  if pid then H.sh("kill " .. pid .. " 2>/dev/null; sleep 0.05; kill -9 " .. pid .. " 2>/dev/null") end
end

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function H.write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

function H.tmpdir()
  local out = H.sh("mktemp -d /tmp/caracal-rel.XXXXXX")
  return (out:gsub("%s+$", ""))
end

---------------------------------------------------------------------------
-- The proxy (spec/reliability/proxy.c), built on first use
---------------------------------------------------------------------------

--- Path of the proxy binary; built into $BUILD/reliability when missing.
function H.proxy_bin()
  local bin = H.build .. "/reliability/proxy"
  local src = H.root .. "/spec/reliability/proxy.c"
  local _, fresh = H.sh("test " .. q(bin) .. " -nt " .. q(src))
  if fresh ~= 0 then
    local out, rc = H.sh("mkdir -p " .. q(H.build .. "/reliability") .. " && cc -O1 -g -std=c11 -Wall -Wextra -o " ..
                         q(bin .. ".tmp") .. " " .. q(src) .. " && mv " .. q(bin .. ".tmp") .. " " .. q(bin))
    if rc ~= 0 then error("cannot build the proxy: " .. out, 2) end
  end
  return bin
end

local Proxy = {}
Proxy.__index = Proxy

--- Start a proxy to 127.0.0.1:target_port. Returns an object with
-- `port`, `set(mode)`, `status()`, `wait_triggered(n)`, `stop()`.
function H.proxy(target_port, max_seconds)
  local dir = H.tmpdir()
  local self = setmetatable({ dir = dir, control = dir .. "/control", out = dir .. "/out" }, Proxy)
  H.write(self.control, "pass\n")
  self.pid = H.spawn(q(H.proxy_bin()) .. " " .. target_port .. " " .. q(self.control) .. " " .. (max_seconds or 300),
                     self.out)
  local t0 = H.now()
  while true do
    local s = H.read(self.out) or ""
    local port = s:match("port (%d+)")
    if port then self.port = tonumber(port) break end
    if H.now() - t0 > 5 then error("the proxy did not start: " .. s, 2) end
    H.sleep(0.02)
  end
  self.seq = 0
  return self
end

--- Change the proxy's mode (see proxy.c); one-shot modes are armed again.
function Proxy:set(mode)
  self.seq = self.seq + 1
  H.write(self.control .. ".tmp", mode .. " " .. self.seq .. "\n")
  os.rename(self.control .. ".tmp", self.control)
  H.sleep(0.06) -- it re-reads the file every 20 ms
end

function Proxy:status()
  local s = H.read(self.control .. ".status") or ""
  return { triggered = tonumber(s:match("triggered (%d+)")) or 0,
           connections = tonumber(s:match("connections (%d+)")) or 0,
           accepted = tonumber(s:match("accepted (%d+)")) or 0 }
end

function Proxy:stop()
  H.kill(self.pid)
  H.sh("rm -rf " .. q(self.dir))
end

---------------------------------------------------------------------------
-- Acknowledged writes, for "no acknowledged write is lost"
---------------------------------------------------------------------------

local Ledger = {}
Ledger.__index = Ledger

--- A record of writes by id: acknowledged (the commit returned), failed
-- with a known rollback, or with an unknown outcome.
function H.ledger()
  return setmetatable({ acked = {}, failed = {}, unknown = {}, n = 0 }, Ledger)
end

--- Classify one attempt from pcall's results.
function Ledger:note(id, ok, err)
  self.n = self.n + 1
  if ok then self.acked[#self.acked + 1] = id
  elseif type(err) == "table" and err.outcome == "unknown" then self.unknown[#self.unknown + 1] = id
  else self.failed[#self.failed + 1] = id end
end

--- Compare with the table: every acknowledged id present exactly once,
-- every failed one absent, unknown ones present at most once. Returns a
-- summary table (`lost`, `phantom`, `duplicates` must all be 0).
function Ledger:verify(manager, tbl, col)
  col = col or "id"
  local present = {}
  local rows = manager:execute(string.format("select %s as id, count(*) as n from %s group by 1", col, tbl))
  for _, r in ipairs(rows) do present[r.id] = r.n end
  local res = { acked = #self.acked, failed = #self.failed, unknown = #self.unknown, lost = 0, phantom = 0,
                duplicates = 0, unknown_committed = 0, rows = 0 }
  for _, r in ipairs(rows) do res.rows = res.rows + r.n; if r.n > 1 then res.duplicates = res.duplicates + 1 end end
  for _, id in ipairs(self.acked) do if not present[id] then res.lost = res.lost + 1 end end
  for _, id in ipairs(self.failed) do if present[id] then res.phantom = res.phantom + 1 end end
  for _, id in ipairs(self.unknown) do if present[id] then res.unknown_committed = res.unknown_committed + 1 end end
  return res
end

function H.summary(v)
  return string.format("%d acked, %d failed, %d unknown (%d of them committed); lost %d, phantom %d, duplicates %d",
    v.acked, v.failed, v.unknown, v.unknown_committed, v.lost, v.phantom, v.duplicates)
end

return H
