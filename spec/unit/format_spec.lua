-- caracal.format: result sets as psql-style tables, Lua values as bounded,
-- readable text (no database).
local core = require "caracal.core"
local format = require "caracal.format"

local function rows(columns, list)
  list.columns = columns
  return list
end

describe("format.rows", function()
  it("prints a centred header, a rule, the rows and the count, like psql", function()
    assert.equal(table.concat({
      " a | b",
      "---+---",
      " 1 | x",
      "(1 row)",
    }, "\n"), format.rows(rows({ "a", "b" }, { { a = 1, b = "x" } })))
  end)

  it("right-aligns numeric columns, left-aligns text, and prints NULL as an empty cell", function()
    local r = rows({ "id", "name", "amount" }, {
      { id = 1, name = "alpha", amount = core.Decimal("10.50") },
      { id = 22, name = nil, amount = core.Decimal("3.25") },
      { id = 333, name = "γδ", amount = nil },
    })
    assert.equal(table.concat({
      " id  | name  | amount",
      "-----+-------+--------",
      "   1 | alpha |  10.50",
      "  22 |       |   3.25",
      " 333 | γδ    |",
      "(3 rows)",
    }, "\n"), format.rows(r))
  end)

  it("keeps each row on one line and shows JSON values as JSON", function()
    local r = rows({ "note", "doc" }, { { note = "two\nlines\tand tab", doc = { k = true } } })
    assert.equal(table.concat({
      "        note         |    doc",
      "---------------------+------------",
      " two\\nlines\\tand tab | {\"k\":true}",
      "(1 row)",
    }, "\n"), format.rows(r))
  end)

  it("cuts long cells with an ellipsis", function()
    local r = rows({ "s" }, { { s = string.rep("x", 12) } })
    assert.equal("     s\n------------\n xxxxxxxxx…\n(1 row)", format.rows(r, { max_cell = 10 }))
  end)

  it("shows max_rows rows and says how many more there are", function()
    local list = {}
    for i = 1, 5 do list[i] = { n = i } end
    assert.equal(table.concat({
      " n",
      "---",
      " 1",
      " 2",
      "... 3 more rows (showing 2; set repl.max_rows or CARACAL_REPL_MAX_ROWS)",
      "(5 rows)",
    }, "\n"), format.rows(rows({ "n" }, list), { max_rows = 2 }))
  end)

  it("prints an empty result with its header, and no footer when asked", function()
    assert.equal(" a | b\n---+---\n(0 rows)", format.rows(rows({ "a", "b" }, {})))
    assert.equal(" a\n---\n 1", format.rows(rows({ "a" }, { { a = 1 } }), { footer = false }))
  end)

  it("prints a statement without columns as psql does", function()
    assert.equal("--\n(0 rows)", format.rows(rows({}, {})))
  end)
end)

describe("format.value", function()
  it("prints scalars as Lua does, strings raw at the top level", function()
    assert.equal("42", format.value(42))
    assert.equal("hello", format.value("hello"))
    assert.equal("nil", format.value(nil))
    assert.equal("true", format.value(true))
    assert.equal("null", format.value(core.null))
  end)

  it("prints floats with every digit and still as floats", function()
    assert.equal("0.1", format.value(0.1))
    assert.equal("1.0", format.value(1.0))
    assert.equal("0.30000000000000004", format.value(0.1 + 0.2))
  end)

  it("prints decimals, instants and other objects through __tostring", function()
    assert.equal("1.50", format.value(core.Decimal("1.50")))
    local t = core.Instant("2024-01-02T03:04:05Z")
    assert.equal(tostring(t), format.value(t))
    assert.equal("{when = " .. tostring(t) .. "}", format.value({ when = t }))
  end)

  it("prints tables with the array part first, then sorted keys, strings quoted", function()
    assert.equal('{1, 2, "three", [10] = "ten", a = "x", b = {c = true}, ["not id"] = 1}',
      format.value({ 1, 2, "three", b = { c = true }, a = "x", ["not id"] = 1, [10] = "ten" }))
    assert.equal('{s = "a\\nb\\"c"}', format.value({ s = 'a\nb"c' }))
    assert.equal("{}", format.value({}))
  end)

  it("bounds depth and size, and marks cycles", function()
    assert.equal("{a = {b = {...}}}", format.value({ a = { b = { c = {} } } }, { depth = 2 }))
    assert.equal("{1, 2, ... (3 more)}", format.value({ 1, 2, 3, 4, 5 }, { max_items = 2 }))
    local t = { name = "loop" }
    t.self = t
    assert.equal('{name = "loop", self = <cycle>}', format.value(t))
  end)

  it("spreads a table that is too long for one line over several", function()
    assert.equal(table.concat({
      "{",
      '  alpha = "aaaaaaaaaa",',
      "  beta = {1, 2, 3},",
      "}",
    }, "\n"), format.value({ alpha = string.rep("a", 10), beta = { 1, 2, 3 } }, { width = 30 }))
  end)
end)

describe("format.results", function()
  it("separates several values with tabs, as lua.c prints them", function()
    assert.equal("1\tx\tnil\t{2}", format.results({ 1, "x", nil, { 2 }, n = 4 }))
  end)

  it("prints a result set among the values as its own block", function()
    local r = rows({ "a" }, { { a = 1 } })
    assert.equal("2\n a\n---\n 1\n(1 row)", format.results({ 2, r, n = 2 }))
  end)
end)
