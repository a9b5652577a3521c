-- Scope matching (caracal.authority, the pure part): `*` is the only
-- wildcard and every other character is literal, unlike the original,
-- where `.`, `(`, `[`, `+` acted as regex syntax.
local authority = require "caracal.authority"

local match, is_subset = authority.match, authority.is_subset

describe("scope matching", function()
  it("equal strings match, with or without a star", function()
    assert.is_true(match("api:openai:gpt-4", "api:openai:gpt-4"))
    assert.is_true(match("a*b", "a*b"))
    assert.is_true(match("", ""))
    assert.is_false(match("api:openai:gpt-4", "api:openai:gpt-3"))
  end)

  it("a star stands for any run of characters, also none, over the whole value", function()
    assert.is_true(match("api:", "api:*"))
    assert.is_true(match("api:openai:gpt-4", "api:*"))
    assert.is_true(match("anything at all", "*"))
    assert.is_true(match("", "*"))
    assert.is_true(match("", "**"))
    assert.is_false(match("ap", "api:*"))
    assert.is_false(match("xapi:1", "api:*"))       -- anchored at the start
    assert.is_true(match("db:users:read", "*:read"))
    assert.is_false(match("db:users:read:x", "*:read")) -- anchored at the end
    assert.is_true(match("abc", "a*b*c"))
    assert.is_true(match("aXbYc", "a*b*c"))
    assert.is_true(match("aXbYbc", "a*b*c"))
    assert.is_false(match("acb", "a*b*c"))
    assert.is_false(match("a", "a*a"))
    assert.is_true(match("aa", "a*a"))
    assert.is_false(match("aba", "ab*ba"))          -- head and tail may not overlap
    assert.is_true(match("abba", "ab*ba"))
    assert.is_true(match("abab", "*ab*ab*"))
    assert.is_false(match("aba", "*ab*ab*"))
    assert.is_true(match("line1\nline2", "line1*")) -- any character, newline included
  end)

  it("treats regex and Lua pattern characters literally", function()
    assert.is_false(match("axb", "a.b"))            -- '.' is not "any character"
    assert.is_false(match("xaay", "x.*y"))          -- the original's regex matched this
    assert.is_true(match("x.aay", "x.*y"))
    assert.is_true(match("x.*y", "x.*y"))
    assert.is_false(match("a", "[abc]*"))
    assert.is_true(match("[abc]def", "[abc]*"))
    assert.is_false(match("aa", "a+*"))
    assert.is_true(match("a+b", "a+*"))
    assert.is_true(match("(group)", "(*)"))
    assert.is_false(match("group", "(*)"))
    assert.is_false(match("5", "%d*"))              -- Lua's %d is not a class here
    assert.is_true(match("%d5", "%d*"))
    assert.is_true(match("100%", "*%"))
    assert.is_false(match("x", "^x$*"))
    assert.is_true(match("^x$!", "^x$*"))
    assert.is_true(match("a?b", "a?b"))
    assert.is_false(match("acb", "a?b"))
    assert.is_true(match("a\\d", "a\\*"))
    assert.is_false(match("a1", "a\\d"))
    assert.is_true(match("x%-y", "x%-*"))
  end)

  it("handles UTF-8 values and patterns", function()
    assert.is_true(match("caf\u{e9}/menu", "caf\u{e9}/*"))
    assert.is_false(match("cafe/menu", "caf\u{e9}/*"))
    assert.is_true(match("\u{1F600}", "*"))
    assert.is_true(match("\u{e9}x\u{e9}", "\u{e9}*\u{e9}"))
  end)

  it("is linear on pathological patterns (no backtracking blow-up)", function()
    local t = os.clock()
    assert.is_false(match(string.rep("a", 20000), string.rep("*a", 200) .. "b"))
    assert.is_true(match(string.rep("a", 20000) .. "b", string.rep("*a", 200) .. "b"))
    assert.is_true(os.clock() - t < 1)
  end)

  it("does not match non-strings", function()
    assert.is_false(match(nil, "*"))
    assert.is_false(match("x", nil))
    assert.is_false(match(1, "*"))
  end)
end)

describe("scope subsets", function()
  it("needs every child entry, taken literally, to match a parent pattern", function()
    assert.is_true(is_subset({ "api:openai:gpt-4", "api:anthropic" }, { "api:*" }))
    assert.is_true(is_subset({ "api:*" }, { "api:*" }))       -- literally equal
    assert.is_true(is_subset({ "api:openai:*" }, { "api:*" })) -- literally "api:openai:*" matches "api:*"
    assert.is_false(is_subset({ "api:*" }, { "api:openai:*" }))
    assert.is_false(is_subset({ "*" }, { "api:*" }))
    assert.is_true(is_subset({}, { "api:*" }))
    local ok, bad = is_subset({ "read", "write", "delete" }, { "read", "write" })
    assert.is_false(ok)
    assert.equal("delete", bad)
    ok, bad = is_subset({ "a.b" }, { "a*b", "x" })
    assert.is_true(ok)
    ok, bad = is_subset({ "axb" }, { "a.b" })
    assert.is_false(ok)
    assert.equal("axb", bad)
  end)

  it("match_any returns the first matching pattern", function()
    assert.equal("db:*", authority.match_any("db:users", { "api:*", "db:*", "*" }))
    assert.is_nil(authority.match_any("x", { "y", "z*" }))
  end)
end)
