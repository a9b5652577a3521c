-- Exact decimals (src/decimal.c): the Lua face of PostgreSQL's NUMERIC.
local core = require "caracal.core"
local D = core.Decimal

local RANGE = "(NUMERIC allows 131072 digits before the point and 16383 after)"

-- Build PostgreSQL's binary NUMERIC: ndigits, weight, sign, dscale, digits.
local function pgbin(weight, sign, dscale, digits)
  return string.pack(">i2i2I2I2", #digits, weight, sign, dscale)
    .. string.pack(">" .. string.rep("i2", #digits), table.unpack(digits))
end

describe("Decimal", function()
  describe("construction from strings", function()
    it("keeps the text and the scale exactly", function()
      for _, s in ipairs {
        "0.03", "-12.340", "1.000000", "-0.5", "0", "0.00", "42",
        "99999999999999.999999", "-99999999999999.999999",
        "123456789012345678901234567890123456789012345.678901234567890123456789",
      } do
        assert.equal(s, tostring(D(s)))
      end
    end)

    it("normalises signs, leading zeros and exponents", function()
      assert.equal("0.001", tostring(D("1e-3")))
      assert.equal("15.0", tostring(D("1.50e1")))
      assert.equal("12000", tostring(D("12E3")))
      assert.equal("5", tostring(D("+5")))
      assert.equal("12.5000", tostring(D("00012.5000")))
      assert.equal("0.5", tostring(D(".5")))
      assert.equal("5", tostring(D("5.")))
      assert.equal("0.00000", tostring(D("0e-5")))
    end)

    it("prints negative zero as zero with its scale", function()
      assert.equal("0.00", tostring(D("-0.00")))
      assert.equal("0", tostring(D("-0")))
      assert.equal(0, D("-0.00"):sign())
      assert.equal("0.00", tostring(-D("0.00")))
    end)

    it("rejects anything that is not a plain decimal, naming the value", function()
      for _, s in ipairs {
        "abc", "", "-", "+", ".", "+.", "1e", "1e+", "e5", "--1", "1.2.3",
        " 5", "5 ", "1,5", "0x10", "NaN", "nan", "Infinity", "-Infinity", "inf",
      } do
        assert.has_error(function() D(s) end, "Decimal: invalid decimal '" .. s .. "'")
      end
    end)

    it("truncates a long bad value in the message", function()
      local s = string.rep("x", 100)
      assert.has_error(function() D(s) end,
        "Decimal: invalid decimal '" .. string.rep("x", 64) .. "...'")
    end)

    it("refuses values beyond NUMERIC's limits", function()
      assert.has_error(function() D("1e131072") end,
        "Decimal: '1e131072' is out of range " .. RANGE)
      assert.has_error(function() D("1e-16384") end,
        "Decimal: '1e-16384' is out of range " .. RANGE)
      assert.equal(16383, D("1e-16383"):scale())
    end)
  end)

  describe("construction from Lua values", function()
    it("takes integers exactly, including the extremes", function()
      assert.equal("0", tostring(D(0)))
      assert.equal("-42", tostring(D(-42)))
      assert.equal("9223372036854775807", tostring(D(math.maxinteger)))
      assert.equal("-9223372036854775808", tostring(D(math.mininteger)))
    end)

    it("refuses floats because they are not exact", function()
      assert.has_error(function() D(0.1) end,
        'Decimal: got the float 0.1, which is not exact; pass a string ("0.1") or a Decimal')
      assert.has_error(function() D(1.0) end,
        'Decimal: got the float 1.0, which is not exact; pass a string ("1.0") or a Decimal')
    end)

    it("returns a Decimal argument itself (Decimals are immutable)", function()
      local d = D("1.50")
      assert.equal(d, D(d))
      assert.is_true(rawequal(d, D(d)))
    end)

    it("names the accepted types for anything else", function()
      -- The function's name in the message depends on how it was called.
      assert.error_matches(function() D(nil) end,
        "^bad argument #1 to '[%w_.]+' %(decimal string, integer or Decimal expected, got nil%)$")
      assert.error_matches(function() D({}) end,
        "^bad argument #1 to '[%w_.]+' %(decimal string, integer or Decimal expected, got table%)$")
    end)

    it("is_decimal tells Decimals apart", function()
      assert.is_true(core.is_decimal(D("1")))
      assert.is_false(core.is_decimal("1"))
      assert.is_false(core.is_decimal(1))
      assert.is_false(core.is_decimal(nil))
    end)

    it("has the caracal.Decimal metatable", function()
      assert.equal("caracal.Decimal", getmetatable(D("1")).__name)
    end)
  end)

  describe("arithmetic", function()
    it("adds and subtracts keeping the larger scale", function()
      assert.equal("0.3", tostring(D("0.1") + D("0.2")))
      assert.equal("1.50", tostring(D("1") + D("0.50")))
      assert.equal("-0.10", tostring(D("0.1") - D("0.20")))
      assert.equal("0.00", tostring(D("0.10") - D("0.1")))
      assert.equal("100000000000000000000.000001",
        tostring(D("99999999999999999999.999999") + D("0.000002")))
    end)

    it("multiplies adding the scales", function()
      assert.equal("-3.375", tostring(D("1.5") * D("-2.25")))
      assert.equal("1.0000", tostring(D("1.00") * D("1.00")))
      assert.equal("0.00", tostring(D("-0.0") * D("5.0")))
    end)

    it("computes exactly with 40+ digit values", function()
      local a = D("1234567890123456789012345678901234567890.123456789")
      local b = D("9876543210987654321098765432109876543210.987654321")
      assert.equal("11111111101111111110111111111011111111101.111111110", tostring(a + b))
      assert.equal("-8641975320864197532086419753208641975320.864197532", tostring(a - b))
      assert.equal("12193263113702179522618503273386678859451150739156119493974487120865336229233322.374638011112635269",
        tostring(a * b))
    end)

    it("accepts integers and decimal strings on either side", function()
      assert.equal("1.5", tostring("0.5" + D(1)))
      assert.equal("1.5", tostring(D(1) + "0.5"))
      assert.equal("-2", tostring(D(1) - 3))
      assert.equal("2", tostring(3 - D(1)))
      assert.equal("7.50", tostring(3 * D("2.50")))
    end)

    it("refuses float operands", function()
      assert.has_error(function() return D(1) + 0.5 end,
        'Decimal: got the float 0.5, which is not exact; pass a string ("0.5") or a Decimal')
      assert.has_error(function() return 0.25 * D(1) end,
        'Decimal: got the float 0.25, which is not exact; pass a string ("0.25") or a Decimal')
    end)

    it("refuses other operands and bad strings", function()
      assert.has_error(function() return D(1) + {} end,
        "Decimal: expected a Decimal, an integer or a decimal string, got table")
      assert.has_error(function() return D(1) + "x" end, "Decimal: invalid decimal 'x'")
    end)

    it("refuses '/', which cannot be exact", function()
      assert.has_error(function() return D(1) / D(3) end,
        "Decimal: '/' is not exact; use d:div(other, scale)")
    end)

    it("negates", function()
      assert.equal("-1.50", tostring(-D("1.50")))
      assert.equal("1.50", tostring(-D("-1.50")))
    end)

    it("sums one million 0.000001 to exactly 1.000000", function()
      local step, sum = D("0.000001"), D("0")
      for _ = 1, 1000000 do sum = sum + step end
      assert.equal("1.000000", tostring(sum))
      assert.is_true(sum == D(1))
    end)
  end)

  describe("comparison", function()
    it("is numeric, not textual", function()
      assert.is_true(D("1.0") == D("1.00"))
      assert.is_true(D("0.00") == D("-0"))
      assert.is_false(D("1.0") == D("1.01"))
      assert.is_true(D("-2") < D("-1.99"))
      assert.is_true(D("1") < D("1.01"))
      assert.is_true(D("1.10") <= D("1.1"))
      assert.is_false(D("1.2") <= D("1.1"))
      assert.is_true(D("-0.5") < D("0"))
    end)

    it("compares with integers and decimal strings on either side", function()
      assert.is_true(1 < D("1.01"))
      assert.is_true(D("2") <= "2.0")
      assert.is_true("0.1" < D("0.2"))
      assert.is_false(D(5) < 5)
    end)

    it("is never equal to a non-Decimal (Lua's == rule)", function()
      assert.is_false(D(1) == 1)
      assert.is_false(D(1) == "1")
    end)
  end)

  describe("text", function()
    it("concatenates with strings on either side", function()
      assert.equal("x=1.50", "x=" .. D("1.50"))
      assert.equal("1.50 EUR", D("1.50") .. " EUR")
      assert.equal("1.50-2", D("1.50") .. D("-2"))
      assert.equal("12", 1 .. D("2"))
    end)

    it("never uses exponent notation", function()
      assert.equal("0.0000000000000000000001", tostring(D("1e-22")))
      assert.equal("10000000000000000000000", tostring(D("1e22")))
    end)
  end)

  describe("round", function()
    it("rounds half away from zero, for both signs", function()
      local cases = {
        { "2.5", 0, "3" }, { "-2.5", 0, "-3" },
        { "2.45", 1, "2.5" }, { "-2.45", 1, "-2.5" },
        { "2.449", 1, "2.4" }, { "-2.449", 1, "-2.4" },
        { "0.5", 0, "1" }, { "-0.5", 0, "-1" },
        { "0.4", 0, "0" }, { "-0.4", 0, "0" },
        { "9.995", 2, "10.00" }, { "-9.995", 2, "-10.00" },
        { "99999999999999.9999995", 6, "100000000000000.000000" },
        { "1.0000000000000000000000000000000000000005", 39, "1.000000000000000000000000000000000000001" },
      }
      for _, c in ipairs(cases) do
        assert.equal(c[3], tostring(D(c[1]):round(c[2])))
      end
    end)

    it("pads to a larger scale", function()
      assert.equal("1.500", tostring(D("1.5"):round(3)))
      assert.equal("7.00", tostring(D(7):round(2)))
    end)

    it("refuses a negative scale", function()
      assert.has_error(function() D(1):round(-1) end,
        "bad argument #1 to 'round' (scale must be 0..16383)")
    end)
  end)

  describe("div", function()
    it("rounds the quotient half away from zero to the scale", function()
      assert.equal("0.33333", tostring(D(1):div(3, 5)))
      assert.equal("0.66667", tostring(D(2):div(3, 5)))
      assert.equal("-0.66667", tostring(D(-2):div(3, 5)))
      assert.equal("-0.66667", tostring(D(2):div(-3, 5)))
      assert.equal("0.66667", tostring(D(-2):div(-3, 5)))
      assert.equal("3", tostring(D(10):div("4", 0)))
      assert.equal("-3", tostring(D(-10):div("4", 0)))
      assert.equal("2", tostring(D(9):div("4", 0)))
      assert.equal("142857.1428571429", tostring(D(1):div("0.000007", 10)))
      assert.equal("0.50", tostring(D("0.1"):div(D("0.2"), 2)))
    end)

    it("divides long values exactly", function()
      local a = D("12193263113702179522618503273386678859451150739156119493974487120865336229233322.374638011112635269")
      assert.equal("1234567890123456789012345678901234567890.123456789",
        tostring(a:div(D("9876543210987654321098765432109876543210.987654321"), 9)))
      assert.equal("0.000000000000000000000000000000000000000100",
        tostring(D(1):div(D("9999999999999999999999999999999999999999"), 42)))
    end)

    it("refuses division by zero", function()
      assert.has_error(function() D(1):div(D("0.00"), 2) end, "Decimal: division by zero")
    end)
  end)

  describe("queries", function()
    it("scale and precision count as NUMERIC does", function()
      assert.equal(6, D("99999999999999.999999"):scale())
      assert.equal(20, D("99999999999999.999999"):precision())
      assert.equal(3, D("0.001"):precision())
      assert.equal(5, D("-123.45"):precision())
      assert.equal(1, D("0"):precision())
      assert.equal(0, D("12000"):scale())
      assert.equal(5, D("12000"):precision())
    end)

    it("is_zero, sign and abs", function()
      assert.is_true(D("0.000"):is_zero())
      assert.is_false(D("0.001"):is_zero())
      assert.equal(-1, D("-0.01"):sign())
      assert.equal(0, D("-0"):sign())
      assert.equal(1, D("3"):sign())
      assert.equal("3.10", tostring(D("-3.10"):abs()))
      assert.equal("3.10", tostring(D("3.10"):abs()))
    end)

    it("tonumber is the nearest float", function()
      assert.equal(0.1, D("0.1"):tonumber())
      assert.equal(math.type(1.0), math.type(D("1"):tonumber()))
      assert.equal(-1.5e300, D("-1.5e300"):tonumber())
    end)

    it("tointeger is exact or nil", function()
      assert.equal(2, D("2.000"):tointeger())
      assert.equal("integer", math.type(D("2.000"):tointeger()))
      assert.is_nil(D("1.5"):tointeger())
      assert.is_nil(D("-0.001"):tointeger())
      assert.equal(math.maxinteger, D("9223372036854775807"):tointeger())
      assert.equal(math.mininteger, D("-9223372036854775808"):tointeger())
      assert.is_nil(D("9223372036854775808"):tointeger())
      assert.is_nil(D("-9223372036854775809"):tointeger())
      assert.equal(0, D("-0.00"):tointeger())
    end)

    it("methods name the type they need", function()
      assert.has_error(function() D(1).scale("1") end,
        "bad argument #1 to 'scale' (caracal.Decimal expected, got string)")
    end)
  end)

  describe("fits", function()
    it("accepts the largest NUMERIC(20,6) value and its negative", function()
      assert.is_true(D("99999999999999.999999"):fits(20, 6))
      assert.is_true(D("-99999999999999.999999"):fits(20, 6))
    end)

    it("refuses digits that NUMERIC would round away", function()
      assert.same({ false, "has 7 decimal places, NUMERIC(20,6) allows 6" },
        { D("1.1234567"):fits(20, 6) })
      assert.same({ false, "has 1 decimal place, NUMERIC(5,0) allows 0" },
        { D("1.5"):fits(5, 0) })
    end)

    it("ignores trailing zeros beyond the scale", function()
      assert.is_true(D("1.1234560"):fits(20, 6))
      assert.is_true(D("7.000000000"):fits(1, 0))
    end)

    it("refuses too many digits before the point", function()
      assert.same({ false, "has 15 digits before the point, NUMERIC(20,6) allows 14" },
        { D("100000000000000"):fits(20, 6) })
      assert.same({ false, "has 1 digit before the point, NUMERIC(3,3) allows 0" },
        { D("1.5"):fits(3, 3) })
      assert.is_true(D("0.999"):fits(3, 3))
      assert.is_true(D("-0.000"):fits(1, 0))
    end)

    it("checks its arguments", function()
      assert.has_error(function() D(1):fits(0, 0) end,
        "bad argument #1 to 'fits' (precision must be 1..1000)")
      assert.has_error(function() D(1):fits(5, 6) end,
        "bad argument #2 to 'fits' (scale must be 0..precision)")
    end)
  end)

  describe("PostgreSQL binary NUMERIC (dec_push_pgbinary)", function()
    local from = core._decimal_from_pgbinary

    it("decodes values with their display scale", function()
      assert.equal("0", tostring(from(pgbin(0, 0x0000, 0, {}))))
      assert.equal("0.00", tostring(from(pgbin(0, 0x0000, 2, {}))))
      assert.equal("12345.678", tostring(from(pgbin(1, 0x0000, 3, { 1, 2345, 6780 }))))
      assert.equal("-0.5", tostring(from(pgbin(-1, 0x4000, 1, { 5000 }))))
      assert.equal("0.00001", tostring(from(pgbin(-2, 0x0000, 5, { 1000 }))))
      assert.equal("10000", tostring(from(pgbin(1, 0x0000, 0, { 1 }))))
      assert.equal("1.000000", tostring(from(pgbin(0, 0x0000, 6, { 1 }))))
      assert.equal("-99999999999999.999999",
        tostring(from(pgbin(3, 0x4000, 6, { 99, 9999, 9999, 9999, 9999, 9900 }))))
    end)

    it("refuses NaN, infinities and malformed input", function()
      assert.is_nil(from(pgbin(0, 0xC000, 0, {})))      -- NaN
      assert.is_nil(from(pgbin(0, 0xD000, 0, {})))      -- +Infinity
      assert.is_nil(from(pgbin(0, 0x1234, 0, {})))      -- unknown sign
      assert.is_nil(from(pgbin(0, 0x0000, 0, { 10000 }))) -- digit > 9999
      assert.is_nil(from(pgbin(0, 0x0000, 0, { 1, 5 }))) -- digits beyond dscale
      assert.is_nil(from(pgbin(-1, 0x0000, 1, { 5100 }))) -- ditto, inside a group
      assert.is_nil(from(string.pack(">i2i2I2I2", 2, 0, 0, 0) .. "\0\1")) -- short
      assert.is_nil(from("\0\0\0"))
      assert.is_nil(from(string.pack(">i2i2I2I2", 0, 0, 0, 0x4000))) -- dscale
    end)
  end)
end)
