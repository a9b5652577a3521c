--- Progress for long tasks: a bar with rate and ETA on a terminal, plain
-- lines otherwise (at most one every few seconds, so logs stay short).
--
--    local bar = progress.new{total = n, label = "importing", tty = ctx.isatty("stderr")}
--    for i = 1, n do ...; bar:update(i) end
--    bar:finish()
-- @module caracal.progress
local M = {}

local Progress = {}
Progress.__index = Progress

local function clock()
  local ok, host = pcall(require, "caracal.host")
  if ok and host.now then return host.now end
  return os.clock
end

--- A new progress reporter.
-- @tparam table opts `total` (nil when unknown), `label`, `tty` (draw a
-- bar), `out` (a file, default io.stderr), `every` (seconds between plain
-- lines, default 5)
function M.new(opts)
  local now = clock()
  return setmetatable({
    total = opts.total, label = opts.label or "progress", tty = opts.tty,
    out = opts.out or io.stderr, every = opts.every or 5, now = now,
    started = now(), last_draw = -1, done = 0,
  }, Progress)
end

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, (s % 3600) // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return s .. "s"
end

function Progress:line()
  local elapsed = self.now() - self.started
  local rate = elapsed > 0 and self.done / elapsed or 0
  if self.total and self.total > 0 then
    local frac = math.min(1, self.done / self.total)
    local eta = rate > 0 and (self.total - self.done) / rate or math.huge
    if self.tty then
      local width = 30
      local fill = math.floor(frac * width + 0.5)
      return string.format("%s [%s%s] %3d%% %d/%d %.0f/s ETA %s", self.label, string.rep("#", fill),
        string.rep(" ", width - fill), math.floor(frac * 100), self.done, self.total, rate, fmt_time(eta))
    end
    return string.format("%s: %d/%d (%d%%), %.0f/s, ETA %s", self.label, self.done, self.total,
      math.floor(frac * 100), rate, fmt_time(eta))
  end
  return string.format("%s: %d, %.0f/s", self.label, self.done, rate)
end

--- Record that `done` items are finished (redraws at most 10 times a
-- second on a terminal, every `every` seconds otherwise).
function Progress:update(done)
  self.done = done
  local t = self.now()
  if self.tty then
    if t - self.last_draw >= 0.1 then
      self.out:write("\r", self:line(), "\27[K")
      self.out:flush()
      self.last_draw = t
    end
  elseif t - self.last_draw >= self.every then
    if self.last_draw >= 0 then self.out:write(self:line(), "\n") end
    self.last_draw = t
  end
end

--- The final line, with the total time.
function Progress:finish()
  local elapsed = self.now() - self.started
  local line = self:line():gsub(" ETA [^ ]+$", "") .. " in " .. fmt_time(elapsed)
  if self.tty then self.out:write("\r", line, "\27[K\n")
  else self.out:write(line, "\n") end
  self.out:flush()
end

return M
