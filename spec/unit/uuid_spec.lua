-- UUIDs as canonical lowercase strings (src/uuid.c).
local core = require "caracal.core"

local CANON = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"

describe("uuid", function()
  it("uuid4 returns distinct random version 4 UUIDs", function()
    local seen = {}
    for _ = 1, 1000 do
      local u = core.uuid4()
      assert.is_string(u)
      assert.truthy(u:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"))
      assert.equal(u:lower(), u)
      assert.is_nil(seen[u])
      seen[u] = true
    end
  end)

  it("normalises every accepted form", function()
    for _, s in ipairs {
      CANON,
      "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
      "a0eebc999c0b4ef8bb6d6bb9bd380a11",
      "A0EEBC999C0B4EF8BB6D6BB9BD380A11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
      "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "URN:UUID:A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
      "urn:uuid:a0eebc999c0b4ef8bb6d6bb9bd380a11",
    } do
      assert.equal(CANON, core.uuid(s))
      assert.is_true(core.is_uuid(s))
    end
  end)

  it("keeps uuid4 output as it is", function()
    local u = core.uuid4()
    assert.equal(u, core.uuid(u))
  end)

  it("refuses anything else, naming the value", function()
    for _, s in ipairs {
      "", "xyz", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",   -- 35 characters
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",            -- 37
      "a0eebc999c0b4ef8bb6d6bb9bd380a1",                  -- 31 hex digits
      "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",             -- not hex
      "a0eebc99+9c0b-4ef8-bb6d-6bb9bd380a11",             -- wrong separator
      "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",             -- hyphen misplaced
      "a0eebc99-9c0b-4ef8-bb6d6-bb9bd380a11",
      "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",            -- unbalanced brace
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
      " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",            -- spaces
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
      "uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "urn:uuid:",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1\0",
    } do
      assert.has_error(function() core.uuid(s) end, "invalid UUID: '" .. s:gsub("%z.*", "") .. "'")
      assert.is_false(core.is_uuid(s))
    end
  end)

  it("truncates a long bad value in the message", function()
    local s = string.rep("z", 100)
    assert.has_error(function() core.uuid(s) end, "invalid UUID: '" .. string.rep("z", 64) .. "...'")
  end)

  it("is_uuid is false for non-strings", function()
    assert.is_false(core.is_uuid(nil))
    assert.is_false(core.is_uuid(12345678))
    assert.is_false(core.is_uuid({}))
  end)

  it("uuid requires a string", function()
    assert.error_matches(function() core.uuid(nil) end,
      "^bad argument #1 to '[%w_.]+' %(string expected, got nil%)$")
  end)
end)
