--- Job: total spending per agent, from the game-loop example's events.
-- Reads only; reports "no events yet" when that example never ran.
return function(session)
  if not session:scalar("select to_regclass('embed_demo_events') is not null") then
    return "no events yet (run examples/embed_host first)"
  end
  local rows = session:execute(
    "select split_part(agent, ':', 2) as agent, sum(cost) as spent, count(*) as n " ..
    "from embed_demo_events group by 1 order by 2 desc limit 3")
  local parts = {}
  for _, r in ipairs(rows) do
    parts[#parts + 1] = string.format("%s %s (%d events)", r.agent, tostring(r.spent), r.n)
  end
  return #parts > 0 and "top spenders: " .. table.concat(parts, ", ") or "no events yet"
end
