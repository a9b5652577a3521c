--- Command-line parsing for admin tasks: `--name value`, `--name=value`,
-- boolean flags, positional words, and usage errors that exit 2.
--
--    local opts, words = args.parse(argv, {
--      type = "value", owner = "value", ["generate-keys"] = "flag", json = "flag",
--    })
--    if not opts then return usage_error(words) end
--
-- Names map to keys with dashes turned into underscores
-- (`--generate-keys` -> `opts.generate_keys`). `-h` is `--help`.
-- @module caracal.args
local M = {}

--- Parse argv against a spec of option names ("flag" or "value").
-- @treturn table|nil options (nil on a usage error)
-- @treturn table|string positional words, or the error message
function M.parse(argv, spec)
  local opts, words = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, #argv do words[#words + 1] = argv[j] end
      break
    elseif a == "-h" or a == "--help" then
      opts.help = true
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([%w%-]+)=(.*)$")
      name = name or a:sub(3)
      local kind = spec[name]
      if not kind then return nil, "unknown option --" .. name end
      local key = name:gsub("%-", "_")
      if kind == "flag" then
        if value then return nil, "option --" .. name .. " takes no value" end
        opts[key] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if value == nil then return nil, "option --" .. name .. " needs a value" end
        end
        opts[key] = value
      end
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  return opts, words
end

return M
