-- The sandbox for scripts that should only touch the database
-- (caracal.sandbox; `caracal --sandbox`): an allow-listed environment,
-- text chunks only, a protected global table, and an instruction budget
-- that pcall cannot swallow (reliability.md S7, after Redis's tests).
package.path = "spec/reliability/?.lua;" .. package.path
local sandbox = require "caracal.sandbox"
local testdb = require "testdb"
local H = require "harness"

local function run(src, opts)
  return pcall(sandbox.run, src, "=(spec)", opts)
end

local function refused(src, pattern, opts)
  local ok, err = run(src, opts)
  assert.is_false(ok, src)
  assert.matches(pattern, tostring(err), 1, true)
  return err
end

describe("the sandbox", function()
  it("runs plain Lua and the caracal value API", function()
    local ok, a, b, c = run([[
      local d = caracal.Decimal("0.1") + caracal.Decimal("0.2")
      local t = {}
      for i = 1, 3 do table.insert(t, string.format("%02d", i)) end
      return tostring(d), table.concat(t, ","), math.max(2, 5) + #caracal.uuid4()
    ]])
    assert.is_true(ok, a)
    assert.same({ "0.3", "01,02,03", 41 }, { a, b, c })
    assert.equal("number", select(2, run("return type(os.time())")))
    assert.is_true(select(2, run("return Principal ~= nil and caracal.LedgerEvent ~= nil")))
  end)

  it("refuses everything outside the allow-list, each with an error naming it", function()
    H.check({ id = "S7", fault = "os.execute/getenv/remove, io, require, package, loadfile, dofile, debug, rawset, string.dump, string.pack, caracal.core",
              expected = "each refused with an error naming it", observed = "each refused by name" }, function()
      for src, name in pairs({
        ["os.execute('id')"] = "os.execute", ["return os.getenv('HOME')"] = "os.getenv",
        ["os.remove('/tmp/x')"] = "os.remove", ["os.exit(1)"] = "os.exit", ["return io.open('/etc/passwd')"] = "io",
        ["return io"] = "io", ["require 'os'"] = "require", ["return package.loaded"] = "package",
        ["loadfile('/etc/passwd')"] = "loadfile", ["dofile('/etc/passwd')"] = "dofile",
        ["return debug.getinfo(1)"] = "debug", ["rawset(_G, 'x', 1)"] = "rawset",
        ["return string.dump(print)"] = "string.dump", ["return ('x').dump"] = "string.dump",
        ["return string.pack('i4', 1)"] = "string.pack",
        ["return caracal.core.Pool"] = "caracal.core",
        ["return caracal.DatabaseConfig{}"] = "caracal.DatabaseConfig",
        ["return caracal.initialize_connection_manager{}"] = "caracal.initialize_connection_manager",
        ["collectgarbage('stop')"] = "collectgarbage(\"stop\")",
      }) do
        refused(src, name .. " is not available")
      end
    end)
  end)

  it("protects the global table (Redis's 'trick global protection' 1-4)", function()
    H.check({ id = "S7", fault = "setmetatable(_G), getmetatable(_G).__index, replacing an API global, _G = {}, _ENV tricks",
              expected = "each refused; the next run sees the environment intact", observed = "refused" }, function()
      refused("setmetatable(_G, {})", "metatable cannot be changed")
      assert.equal("sandbox: protected", select(2, run("return getmetatable(_G)")))
      refused("getmetatable(_G).__index = {}", "attempt to index")
      refused("caracal = function() return 1 end", "'caracal' is protected")
      refused("_G = {}", "'_G' is protected")
      refused("print = nil", "'print' is protected")
      refused("string.rep = nil; os.execute('id')", "os.execute is not available")
      refused("caracal.Decimal = nil", "read-only")
      -- replacing _ENV only blinds the chunk itself
      local ok = run("local _ENV = {}; x = 1")
      assert.is_true(ok)
      -- the string metatable is out of reach and restored after the run
      assert.is_nil(select(2, run("return getmetatable('')")))
      local smt = getmetatable("")
      local idx = smt.__index
      run("local s = ('x'):upper()")
      assert.equal(idx, smt.__index)
      -- globals a script makes are its own
      assert.equal(5, select(2, run("x = 5; return x")))
      assert.is_nil(select(2, run("return x")))
    end)
  end)

  it("loads text only: binary chunks are refused, in and out of the sandbox", function()
    H.check({ id = "S7", fault = "a precompiled (binary) chunk given to run and to load",
              expected = "refused before it runs", observed = "refused" }, function()
      local bytecode = string.dump(function() return 42 end)
      local ok, err = pcall(sandbox.run, bytecode, "=bin")
      assert.is_false(ok)
      assert.matches("binary chunk", tostring(err))
      local ok2, res, msg = run("return load(...)", { args = table.pack(bytecode) })
      assert.is_true(ok2)
      assert.is_nil(res)
      assert.matches("binary chunk", msg)
      assert.is_nil(select(2, run("return load('return 1', 'x', 'b')")))
      assert.equal(4, select(2, run("return load('return 2 + 2')()")))
      -- a chunk loaded inside is bound to the sandbox too
      refused("load('os.execute(\"id\")')()", "os.execute is not available")
    end)
  end)

  it("stops runaway code with an instruction budget that pcall cannot swallow", function()
    H.check({ id = "S7", fault = "while true inside pcall, nested pcall, xpcall, coroutines, __close",
              expected = "each stopped with kind=budget; the host runs on", observed = "stopped every time" }, function()
      local budget = { instruction_budget = 2e5 }
      for _, src in ipairs({
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "local n = 0 while true do pcall(error) n = n + 1 end",
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
        "local co = coroutine.wrap(function() while true do end end) co()",
        "local co = coroutine.create(function() while true do end end) while true do coroutine.resume(co) end",
        "do local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end end",
        "local function f() return pcall(f) end while true do f() end",
      }) do
        local ok, err = run(src, budget)
        assert.is_false(ok, src)
        assert.equal("budget", err.kind, src .. ": " .. tostring(err))
        assert.matches("instruction budget of 200000", err.message, 1, true)
      end
      -- an error object whose __tostring would loop is not handed out
      local ok, err = run("error(setmetatable({}, {__tostring = function() while true do end end}))", budget)
      assert.is_false(ok)
      assert.equal("(error object is a table value)", err)
      -- afterwards the hook is gone and code runs freely
      assert.is_nil(debug.gethook())
      local n = 0
      for _ = 1, 1e6 do n = n + 1 end
      assert.equal(1e6, n)
      assert.equal(3, select(2, run("local s = 0 for i = 1, 1e4 do s = s + 1 end return 3", budget)))
    end)
  end)

  it("refuses memory bombs it can see, and __gc finalizers", function()
    H.check({ id = "S7", fault = "string.rep(1e9), ('x'):rep(1e9), doubling a string past a memory_limit, __gc",
              expected = "refused with kind=memory (or a clear error); the host survives", observed = "refused" }, function()
      assert.equal("memory", refused("return string.rep('x', 1e9)", "not enough memory").kind)
      assert.equal("memory", refused("return ('x'):rep(1e9)", "not enough memory").kind)
      local err = refused("local t = {} for i = 1, 1e7 do t[i] = ('y'):rep(64) .. i end",
                          "not enough memory", { memory_limit = 16 * 1024 * 1024 })
      assert.equal("memory", err.kind)
      collectgarbage()
      refused("setmetatable({}, {__gc = function() while true do end end})", "__gc")
    end)
  end)

  describe("with a database", function()
    local m

    setup(function()
      m = testdb.manager({ pool_size = 2, max_overflow = 0 })
      m:execute("drop table if exists sandbox_t")
      m:execute("create table sandbox_t(x int)")
    end)

    teardown(function()
      m:execute("drop table if exists sandbox_t")
      m:close()
    end)

    it("gives scripts the database, and a budget stop rolls their scope back", function()
      H.check({ id = "S7", fault = "a runaway loop inside a transaction scope of a sandboxed script",
                expected = "stopped; the scope rolled back (0 rows); the connection back in the pool",
                observed = "stopped; 0 rows; checked_out 0", rows = 1 }, function()
        local ok, n = run([[
          db:session_scope(function(s) s:execute("insert into sandbox_t values (1)") end)
          return db:execute("select count(*) as n from sandbox_t")[1].n
        ]], { env = { db = m } })
        assert.is_true(ok, n)
        assert.equal(1, n)
        local ok2, err = run([[
          db:session_scope(function(s)
            s:execute("insert into sandbox_t values (2)")
            while true do pcall(function() while true do end end) end
          end)
        ]], { env = { db = m }, instruction_budget = 3e5 })
        assert.is_false(ok2)
        assert.equal("budget", err.kind)
        assert.equal(1, m:execute("select count(*) as n from sandbox_t")[1].n)
        assert.equal(0, m:get_pool_status().checked_out)
      end)
    end)

    it("keeps the password out of the script's reach", function()
      local dbm = require("caracal.db").create_connection_manager({ host = "127.0.0.1", port = testdb.port,
        user = "caracal", password = "sandbox-secret-1", pool_size = 1 })
      sandbox.scrub(dbm)
      local ok, pw, one = run("return db.config.password, db:execute('select 1 as v')[1].v", { env = { db = dbm } })
      assert.is_true(ok, pw)
      assert.equal("***", pw)
      assert.equal(1, one)
      assert.is_nil(tostring(dbm):find("sandbox-secret", 1, true))
      dbm:close()
    end)

    it("runs from the command line: --sandbox, run --sandbox, --budget", function()
      local bin = H.q(testdb.bin)
      local url = H.q(testdb.url)
      local out, rc = H.sh(bin .. " --sandbox --url " .. url ..
        " -e " .. H.q("print(db:execute('select 40 + 2 as v')[1].v)") .. " </dev/null")
      assert.equal(0, rc, out)
      assert.matches("42", out)
      out, rc = H.sh(bin .. " --sandbox -e " .. H.q("print(io.open('/etc/passwd'))") .. " </dev/null")
      assert.equal(1, rc)
      assert.matches("io is not available", out, 1, true)
      out, rc = H.sh(bin .. " --budget 100000 -e " .. H.q("while true do pcall(function() while true do end end) end") ..
                     " </dev/null")
      assert.equal(1, rc)
      assert.matches("instruction budget of 100000", out, 1, true)
      local dir = H.tmpdir()
      H.write(dir .. "/ok.lua", "print('ran', ...)\n")
      H.write(dir .. "/evil.lua", "os.execute('touch " .. dir .. "/pwned')\n")
      H.write(dir .. "/bin.luac", string.dump(function() print("binary ran") end))
      out, rc = H.sh(bin .. " run --sandbox " .. H.q(dir .. "/ok.lua") .. " -- a b </dev/null")
      assert.equal(0, rc, out)
      assert.matches("ran\ta\tb", out, 1, true)
      out, rc = H.sh(bin .. " run --sandbox " .. H.q(dir .. "/evil.lua") .. " </dev/null")
      assert.equal(1, rc)
      assert.matches("os.execute is not available", out, 1, true)
      assert.is_nil(H.read(dir .. "/pwned"))
      for _, flags in ipairs({ "--sandbox ", "" }) do
        out, rc = H.sh(bin .. " " .. flags .. H.q(dir .. "/bin.luac") .. " </dev/null")
        assert.equal(1, rc)
        assert.is_nil(out:find("binary ran", 1, true))
        assert.matches("binary", out)
      end
      out, rc = H.sh(bin .. " --budget x -e 'print(1)' </dev/null")
      assert.equal(2, rc)
      H.sh("rm -rf " .. H.q(dir))
    end)
  end)
end)
