-- Print the reliability report: one row per case recorded in the JSON
-- lines file given as the first argument (written by the specs through
-- harness.record, by test_load.c and by spec/fuzz/run.sh), as a table of
-- the fault or input, what was expected, what happened and the rows
-- checked for loss. Run by the host: `caracal report.lua FILE [WIDTH]`.
local path, width = arg[1], tonumber(arg[2]) or 160
local f = assert(io.open(path, "r"), "no report file " .. tostring(path))
local rows = {}
for line in f:lines() do
  if line:match("%S") then
    local ok, r = pcall(caracal.json_decode, line)
    if ok and type(r) == "table" then rows[#rows + 1] = r end
  end
end
f:close()

local function text(v)
  if v == nil or v == caracal.null then return "" end
  return tostring(v)
end

-- Wrap s to lines of at most w characters (UTF-8 aware enough for our text).
local function wrap(s, w)
  local out, line = {}, ""
  for word in s:gmatch("%S+") do
    while utf8.len(word) and utf8.len(word) > w do
      if line ~= "" then out[#out + 1] = line line = "" end
      out[#out + 1] = word:sub(1, w)
      word = word:sub(w + 1)
    end
    if line == "" then line = word
    elseif utf8.len(line) + 1 + utf8.len(word) <= w then line = line .. " " .. word
    else out[#out + 1] = line line = word end
  end
  if line ~= "" or #out == 0 then out[#out + 1] = line end
  return out
end

local function pad(s, w)
  local n = utf8.len(s) or #s
  return s .. string.rep(" ", math.max(0, w - n))
end

local fixed = 3 + 10 + 8 + 3 * 6
local rest = math.max(60, width - fixed)
local W = { 3, 10, math.floor(rest * 0.36), math.floor(rest * 0.32), rest - math.floor(rest * 0.36) - math.floor(rest * 0.32), 8 }
local head = { "", "case", "fault or input", "expected", "what happened", "rows" }
local function emit(cells)
  local wrapped, height = {}, 1
  for i, c in ipairs(cells) do
    wrapped[i] = wrap(c, W[i])
    height = math.max(height, #wrapped[i])
  end
  for l = 1, height do
    local parts = {}
    for i = 1, #cells do parts[i] = pad(wrapped[i][l] or "", W[i]) end
    io.write("| ", table.concat(parts, " | "), " |\n")
  end
end
local function rule()
  local parts = {}
  for i = 1, #W do parts[i] = string.rep("-", W[i]) end
  io.write("|-", table.concat(parts, "-|-"), "-|\n")
end

io.write("\nReliability report (", #rows, " cases; full records in ", path, ")\n")
rule()
emit(head)
rule()
local ok, bad, skipped, rowsum = 0, 0, 0, 0
for _, r in ipairs(rows) do
  local happened = text(r.observed)
  local mark
  if r.ok == false then mark, bad = "NO", bad + 1
  elseif happened:match("^skipped") then mark, skipped = "--", skipped + 1
  else mark, ok = "ok", ok + 1 end
  if type(r.rows) == "number" then rowsum = rowsum + r.rows end
  emit({ mark, text(r.id), text(r.fault), text(r.expected), happened, type(r.rows) == "number" and
         string.format("%d", r.rows) or "" })
  rule()
end
io.write(string.format("%d as expected, %d not, %d skipped; %d rows checked for loss\n", ok, bad, skipped, rowsum))
