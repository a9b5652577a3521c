-- The JSON codec for JSONB columns, parameters and --json output.
local core = require "caracal.core"

describe("JSON", function()
  it("keeps integers exact both ways", function()
    assert.equal("[9007199254740993,9223372036854775807,-9223372036854775808]",
                 core.json_encode({ 9007199254740993, math.maxinteger, math.mininteger }))
    local back = core.json_decode("[9007199254740993, 3]")
    assert.equal(9007199254740993, back[1])
    assert.equal("integer", math.type(back[2]))
  end)

  it("writes floats with the shortest text that reads back exactly", function()
    assert.equal("[0.1,0.30000000000000004,1e+300]", core.json_encode({ 0.1, 0.1 + 0.2, 1e300 }))
    assert.equal(0.1 + 0.2, core.json_decode("0.30000000000000004"))
    assert.has_error(function() core.json_encode({ 0 / 0 }) end)
  end)

  it("keeps an empty array an array, and JSON null apart from nil", function()
    local v = core.json_decode('{"a":[],"b":{},"c":null}')
    assert.equal('{"a":[],"b":{},"c":null}', core.json_encode(v))
    assert.equal(core.null, v.c)
    assert.is_true(core.is_json_array(v.a))
    assert.equal("[]", core.json_encode(core.json_array()))
    assert.equal("{}", core.json_encode({}))
  end)

  it("sorts object keys so equal values encode equally", function()
    assert.equal('{"a":1,"b":2,"c":{"x":true,"y":false}}', core.json_encode({ c = { y = false, x = true }, b = 2, a = 1 }))
  end)

  it("escapes non-ASCII as \\u on request, with surrogate pairs", function()
    assert.equal('"caf\\u00e9 \\ud83d\\ude00"', core.json_encode("café 😀", { ascii = true }))
    assert.equal('"café 😀"', core.json_encode("café 😀"))
    assert.equal("café 😀", core.json_decode('"caf\\u00e9 \\ud83d\\ude00"'))
  end)

  it("rejects what JSON cannot hold, naming the problem", function()
    assert.has_error(function() core.json_encode("a\0b") end, "cannot encode as JSON: a string contains a NUL byte")
    assert.has_error(function() core.json_encode("\xC3\x28") end, "cannot encode as JSON: invalid UTF-8 at byte 1 of a string")
    assert.has_error(function() core.json_encode({ [true] = 1 }) end, "cannot encode as JSON: a table key of type boolean")
    local deep = {}
    local cur = deep
    for _ = 1, 600 do cur.x = {} cur = cur.x end
    assert.has_error(function() core.json_encode(deep) end, "cannot encode as JSON: nested too deeply (or a cycle)")
    assert.has_error(function() core.json_decode(string.rep("[", 600)) end, "invalid JSON: nested too deeply at byte 501")
    assert.has_error(function() core.json_decode('{"a":1,}') end, "invalid JSON: expected a string key at byte 8")
    assert.has_error(function() core.json_decode('"\\u0000"') end, "invalid JSON: \\u0000 is not allowed at byte 2")
    assert.has_error(function() core.json_decode("[1] x") end, "invalid JSON: trailing characters at byte 5")
  end)

  it("encodes large nested documents", function()
    local t = {}
    for i = 1, 3000 do t["agent-" .. i] = { n = i, tags = { "a", "b" }, note = string.rep("z", 40) } end
    local text = core.json_encode({ agent_spending = t })
    assert.equal(2999, core.json_decode(text).agent_spending["agent-2999"].n)
    assert.is_true(#text > 200000)
  end)

  it("encodes Decimals and Instants as their exact text", function()
    assert.equal('["0.030000","2024-01-02T03:04:05Z"]',
                 core.json_encode({ core.Decimal("0.030000"), core.Instant("2024-01-02T03:04:05Z") }))
  end)
end)
