-- UTC instants with microsecond precision (src/instant.c).
local core = require "caracal.core"
local I = core.Instant

local function bad(s)
  return "Instant: invalid ISO 8601 instant '" .. s .. "'"
end

describe("Instant", function()
  describe("parsing", function()
    it("reads the full form and round-trips it", function()
      local t = I("2024-01-02T03:04:05.123456Z")
      assert.equal(1704164645123456, t:micros())
      assert.equal("2024-01-02T03:04:05.123456Z", tostring(t))
    end)

    it("reads a date alone as midnight UTC", function()
      assert.equal("2024-02-29T00:00:00Z", tostring(I("2024-02-29")))
    end)

    it("takes a space or T, optional seconds and 1 to 6 fraction digits", function()
      assert.equal("2024-01-02T03:04:00Z", tostring(I("2024-01-02 03:04")))
      assert.equal("2024-01-02T03:04:05Z", tostring(I("2024-01-02T03:04:05")))
      assert.equal("2000-01-01T00:00:00.500000Z", tostring(I("2000-01-01 00:00:00.5")))
      assert.equal(946684800000001, I("2000-01-01T00:00:00.000001Z"):micros())
    end)

    it("applies every offset form", function()
      local cases = {
        { "2024-01-01T00:30:00+01:00", "2023-12-31T23:30:00Z" },
        { "2024-01-01T00:30:00+01", "2023-12-31T23:30:00Z" },
        { "2024-01-01T00:30:00+0100", "2023-12-31T23:30:00Z" },
        { "2024-01-01T00:30:00-0130", "2024-01-01T02:00:00Z" },
        { "2024-01-01 00:30:00-01:30", "2024-01-01T02:00:00Z" },
        { "2024-01-01 00:30:00.25-05", "2024-01-01T05:30:00.250000Z" },
        { "2024-01-01T00:30:00z", "2024-01-01T00:30:00Z" },
        { "2024-01-01T00:30+00", "2024-01-01T00:30:00Z" },
        -- PostgreSQL prints seconds in offsets of historical zones.
        { "1900-01-01 00:00:00+00:09:21", "1899-12-31T23:50:39Z" },
        { "1900-01-01 00:00:00-00:09:21", "1900-01-01T00:09:21Z" },
      }
      for _, c in ipairs(cases) do
        assert.equal(c[2], tostring(I(c[1])))
      end
    end)

    it("reads PostgreSQL's timestamptz output", function()
      assert.equal("2024-06-30T22:15:00.123400Z", tostring(I("2024-07-01 00:15:00.1234+02")))
    end)

    it("handles instants before 1970 with floor division", function()
      local t = I("1969-12-31T23:59:59.999999Z")
      assert.equal(-1, t:micros())
      assert.equal(-1, t:unix())
      assert.equal("1969-12-31T23:59:59.999999Z", tostring(t))
      assert.equal(-1000000, I("1969-12-31T23:59:59Z"):micros())
      assert.equal(-2, I("1969-12-31T23:59:58.5Z"):unix())
    end)

    it("covers years 0001 to 9999", function()
      local first = I("0001-01-01")
      assert.equal(-62135596800000000, first:micros())
      assert.equal("0001-01-01T00:00:00Z", tostring(first))
      local last = I("9999-12-31T23:59:59.999999")
      assert.equal(253402300799999999, last:micros())
      assert.equal("9999-12-31T23:59:59.999999Z", tostring(last))
      assert.equal("2100-03-01T00:00:00Z", tostring(I("2100-02-28") + 86400)) -- 2100: no leap day
      assert.equal("2400-02-29T00:00:00Z", tostring(I("2400-02-28") + 86400))
    end)

    it("round-trips across the whole range", function()
      for _, s in ipairs {
        "0001-01-01T00:00:00.000001Z", "0999-12-31T23:59:59Z", "1600-02-29T12:00:00Z",
        "1899-12-31T23:59:59.999999Z", "1900-03-01T00:00:00Z", "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59.000001Z", "2038-01-19T03:14:08Z", "2100-12-31T23:59:59Z",
        "2400-02-29T00:00:00Z", "9999-12-31T23:59:59.999999Z",
      } do
        local t = I(s)
        assert.equal(s, tostring(t))
        assert.equal(t, I(t:naive()))
        assert.equal(t, I(core._instant_format_pg(t)))
        assert.equal(t, core.instant_from_micros(t:micros()))
      end
    end)

    it("refuses malformed and out-of-range text, naming the value", function()
      for _, s in ipairs {
        "", "x", "2024", "2024-1-01", "2024-01-1", "24-01-01", "2024/01/01",
        "2023-02-29", "2100-02-29", "2024-13-01", "2024-00-10", "2024-01-00",
        "2024-04-31", "2024-01-32",
        "2024-01-01T", "2024-01-01T1:00", "2024-01-01T01", "2024-01-01T01:00:0",
        "2024-01-01T24:00:00", "2024-01-01T23:60", "2024-01-01T23:59:60",
        "2024-01-01T00:00:00.", "2024-01-01T00:00:00.1234567",
        "2024-01-01Z", "2024-01-01T00:00:00+1", "2024-01-01T00:00:00+01:",
        "2024-01-01T00:00:00+010", "2024-01-01T00:00:00+01:60", "2024-01-01T00:00:00+24",
        "2024-01-01T00:00:00 +01", "2024-01-01T00:00:00Z ", " 2024-01-01",
        "0000-01-01", "2024-01-01 BC", "2024-01-01 00:00:00+00 BC",
        "0001-01-01T00:00:00+01", "9999-12-31T23:59:59-01",
        "10000-01-01",
      } do
        assert.has_error(function() I(s) end, bad(s))
      end
    end)

    it("truncates a long bad value in the message", function()
      local s = string.rep("9", 80)
      assert.has_error(function() I(s) end, bad(string.rep("9", 64) .. "..."))
    end)
  end)

  describe("construction", function()
    it("takes Unix seconds as os.time() gives them", function()
      assert.equal("1970-01-01T00:00:00Z", tostring(I(0)))
      assert.equal("2024-01-02T03:04:05Z", tostring(I(1704164645)))
      assert.equal("1969-12-31T23:59:59Z", tostring(I(-1)))
      assert.equal(I(os.time()):unix(), os.time())
    end)

    it("rounds float seconds to the microsecond", function()
      assert.equal(1500000, I(1.5):micros())
      assert.equal(100000, I(0.1):micros())
      assert.equal(1, I(0.0000006):micros())
    end)

    it("returns an Instant argument itself", function()
      local t = I(0)
      assert.is_true(rawequal(t, I(t)))
    end)

    it("refuses other types", function()
      assert.error_matches(function() I(nil) end,
        "^bad argument #1 to '[%w_.]+' %(ISO 8601 string, Unix seconds or Instant expected, got nil%)$")
      assert.error_matches(function() I(core.Decimal("1")) end,
        "^bad argument #1 to '[%w_.]+' %(caracal.Instant expected, got caracal.Decimal%)$")
      assert.has_error(function() I(math.maxinteger) end, "Instant: result out of range")
    end)

    it("instant_from_micros and micros are inverse, to the extremes", function()
      assert.equal(-1, core.instant_from_micros(-1):micros())
      assert.equal(math.maxinteger, core.instant_from_micros(math.maxinteger):micros())
      assert.equal("+294247-01-10T04:00:54.775807Z", tostring(core.instant_from_micros(math.maxinteger)))
      assert.equal("-290308-12-21T19:59:05.224192Z", tostring(core.instant_from_micros(math.mininteger)))
    end)

    it("utcnow is close to os.time()", function()
      local now = core.utcnow()
      assert.is_true(core.is_instant(now))
      assert.is_true(math.abs(now:unix() - os.time()) <= 2)
      assert.is_true(now <= core.utcnow())
    end)

    it("is_instant tells Instants apart", function()
      assert.is_true(core.is_instant(I(0)))
      assert.is_false(core.is_instant("1970-01-01"))
      assert.is_false(core.is_instant(0))
      assert.is_false(core.is_instant(core.Decimal("0")))
    end)

    it("has the caracal.Instant metatable", function()
      assert.equal("caracal.Instant", getmetatable(I(0)).__name)
    end)
  end)

  describe("comparison and arithmetic", function()
    local t = I("2024-01-01T00:00:00Z")

    it("orders and compares by value", function()
      assert.is_true(I("2024-01-01T01:00:00+01:00") == t)
      assert.is_true(t < t + 0.000001)
      assert.is_false(t + 0.000001 < t)
      assert.is_true(t <= t)
      assert.is_true(I("1969-12-31T23:59:59Z") < I(0))
      assert.is_false(t == t:micros())
    end)

    it("adds integer and float seconds on either side", function()
      assert.equal("2024-01-01T00:00:01Z", tostring(t + 1))
      assert.equal("2024-01-01T00:00:01Z", tostring(1 + t))
      assert.equal("2024-01-01T00:00:00.500000Z", tostring(t + 0.5))
      assert.equal("2023-12-31T23:59:59.999999Z", tostring(t + -0.000001))
      assert.equal("2024-01-01T00:00:00Z", tostring(t + 0.0000004)) -- rounds to 0 us
      assert.equal("2024-01-02T00:00:00Z", tostring(t + 86400))
    end)

    it("subtracts seconds and Instants", function()
      assert.equal("2023-12-31T23:59:58.500000Z", tostring(t - 1.5))
      assert.equal(86400.0, t - I("2023-12-31T00:00:00Z"))
      assert.equal("float", math.type(t - t))
      assert.equal(-0.000001, t - (t + 0.000001))
      assert.equal(0.1, (t + 0.1) - t)
    end)

    it("refuses meaningless arithmetic", function()
      assert.has_error(function() return t + t end, "Instant: cannot add two Instants")
      assert.has_error(function() return 1 - t end, "Instant: cannot subtract an Instant from a number")
      assert.has_error(function() return t + "1" end, "Instant: expected seconds (a number), got string")
      assert.has_error(function() return core.instant_from_micros(math.maxinteger) + 1 end,
        "Instant: result out of range")
      assert.has_error(function() return core.instant_from_micros(math.mininteger) - 0.000001 end,
        "Instant: result out of range")
      assert.has_error(function() return t + 1e300 end, "Instant: result out of range")
      assert.has_error(function() return t + (0 / 0) end, "Instant: result out of range")
    end)

    it("refuses comparing with other types", function()
      assert.error_matches(function() return t < 1 end,
        "^bad argument #2 to '[%w_.]+' %(caracal.Instant expected, got number%)$")
    end)
  end)

  describe("formatting", function()
    it("prints the fraction only when there is one, then 6 digits", function()
      assert.equal("2024-01-02T03:04:05Z", I("2024-01-02T03:04:05Z"):iso())
      assert.equal("2024-01-02T03:04:05.100000Z", I("2024-01-02T03:04:05.1Z"):iso())
    end)

    it("naive is UTC without a zone (the signature form)", function()
      assert.equal("2024-01-02T01:04:05", I("2024-01-02T03:04:05+02:00"):naive())
      assert.equal("2024-01-02T03:04:05.000001", I("2024-01-02T03:04:05.000001Z"):naive())
      assert.equal("1969-12-31T23:59:59.999999", core.instant_from_micros(-1):naive())
    end)

    it("writes PostgreSQL parameters (inst_format_pg)", function()
      assert.equal("2024-01-02 03:04:05.123456+00",
        core._instant_format_pg(I("2024-01-02T03:04:05.123456Z")))
      assert.equal("1969-12-31 23:59:59.000000+00", core._instant_format_pg(I(-1)))
      assert.equal("0001-01-01 00:00:00.000000+00", core._instant_format_pg(I("0001-01-01")))
      -- before year 1, PostgreSQL's BC suffix (year 0 is 1 BC)
      assert.equal("0001-12-31 23:59:59.000000+00 BC",
        core._instant_format_pg(I("0001-01-01") - 1))
    end)

    it("date_table is like os.date('!*t') plus usec", function()
      local d = I("2024-03-10T01:02:03.000004Z"):date_table()
      assert.same({ year = 2024, month = 3, day = 10, hour = 1, min = 2, sec = 3, usec = 4,
                    wday = 1, yday = 70, isdst = false }, d)
      local secs = 1710032523
      local o = os.date("!*t", secs)
      o.usec = 0
      assert.same(o, I(secs):date_table())
      local b = core.instant_from_micros(-1):date_table()
      assert.same({ 1969, 12, 31, 23, 59, 59, 999999, 4, 365 },
        { b.year, b.month, b.day, b.hour, b.min, b.sec, b.usec, b.wday, b.yday })
    end)
  end)
end)
