-- The failover spec's writer: `caracal --url URL spec/scale/writer.lua OUT STOP SECONDS`.
-- Inserts n = 1, 2, 3 ... into scale_writes, each in its own transaction,
-- and writes one line per attempt to OUT: "ack n" once COMMIT returned,
-- "fail n OUTCOME MESSAGE" when it raised (OUTCOME: the error's outcome,
-- e.g. "unknown" for a connection lost during COMMIT, else its SQLSTATE).
-- It never restarts anything: the pool replaces dead connections and
-- libpq's target_session_attrs=read-write finds the new primary. Stops
-- when the file STOP exists or after SECONDS, writing "done n".
local core = require "caracal.core"
local out = assert(io.open(arg[1], "w"))
out:setvbuf("line")
local deadline = core.utcnow() + tonumber(arg[3])
local n = 0
while core.utcnow() < deadline do
  local stop = io.open(arg[2])
  if stop then stop:close() break end
  n = n + 1
  local ok, err = pcall(db.session_scope, db, function(s)
    s:execute("insert into scale_writes (n) values ($1)", n)
  end)
  if ok then
    out:write("ack ", n, "\n")
  else
    local outcome = core.is_error(err) and (err.outcome or err.sqlstate) or "error"
    out:write("fail ", n, " ", tostring(outcome), " ", (tostring(err):gsub("%s+", " ")), "\n")
    core.sleep(0.05)
  end
end
out:write("done ", n, "\n")
out:close()
