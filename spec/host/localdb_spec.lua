-- caracal.localdb: the local PostgreSQL cluster that starts by itself.
-- Every cluster started here lives in a fresh temporary folder and is
-- destroyed at the end of its test (and again in teardown, should a test
-- fail half way).

local localdb = require("caracal.localdb")
local cjson = require("cjson")

local function q(s)
  return "'" .. (tostring(s):gsub("'", [['\'']])) .. "'"
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- ok, output (stdout and stderr), exit code
local function sh(cmd)
  local p = assert(io.popen("( " .. cmd .. " ) 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok == true, out, code
end

local function must(cmd)
  local ok, out = sh(cmd)
  assert(ok, "command failed: " .. cmd .. "\n" .. out)
  return out
end

local ROOT = trim(must("id -u")) == "0"
local REPO = trim(must("pwd"))
local LUA_DIR = REPO .. "/lua"
local HAVE_SS = sh("command -v ss")

local temps, homes = {}, {}

local function tmpdir()
  local d = trim(must("mktemp -d"))
  temps[#temps + 1] = d
  return d
end

-- A fresh state folder (inside a mktemp -d folder, mode 0700, like CI).
local function fresh_home()
  local h = tmpdir() .. "/.caracal"
  homes[#homes + 1] = h
  return h
end

local function cleanup(home)
  pcall(localdb.destroy, { home = home })
end

-- The `caracal local` command line in a child process:
-- exit code, stdout, stderr.
local RUNNER = (function()
  local d = tmpdir()
  must("chmod 0755 " .. q(d))
  local path = d .. "/run.lua"
  local f = assert(io.open(path, "w"))
  f:write('os.exit(require("caracal.localdb").main(arg))\n')
  f:close()
  must("chmod 0644 " .. q(path))
  return { dir = d, path = path }
end)()

local function cli(args, opts)
  opts = opts or {}
  local out, err = os.tmpname(), os.tmpname()
  local cmd = ("cd / && %s env LUA_PATH=%s %s lua5.4 %s %s >%s 2>%s"):format(
    opts.as and ("runuser -u " .. q(opts.as) .. " --") or "",
    q((opts.lua_dir or LUA_DIR) .. "/?.lua;;"), opts.env or "", q(RUNNER.path), args, q(out), q(err))
  local _, _, code = os.execute(cmd)
  local function slurp(p)
    local f = io.open(p)
    local s = f and f:read("a") or ""
    if f then f:close() end
    os.remove(p)
    return s
  end
  return code, slurp(out), slurp(err)
end

local function psql(host, port, sql)
  return sh(("psql -X -h %s -p %s -U caracal -d caracal -v ON_ERROR_STOP=1 -Atc %s"):format(
    q(host), q(math.tointeger(port) or port), q(sql)))
end

local function query(info, sql)
  local ok, out = psql(info.socket_dir, info.port, sql)
  assert(ok, "psql failed: " .. out)
  return trim(out)
end

local function exists(path)
  return (sh("test -e " .. q(path) .. " || test -L " .. q(path)))
end

-- Alive and not a zombie (a container's init may not reap them).
local function process_alive(pid)
  local ok, out = sh(("ps -o stat= -p %d"):format(pid))
  return ok and not trim(out):match("^Z")
end

local function process_user(pid)
  return trim(must(("ps -o user= -p %d"):format(pid)))
end

-- TCP ports something listens on (ss -ltn).
local function listening()
  local ports = {}
  for line in must("ss -ltnH"):gmatch("[^\n]+") do
    local addr = line:match("^%S+%s+%S+%s+%S+%s+(%S+)")
    local port = addr and addr:match(":(%d+)$")
    if port then ports[tonumber(port)] = addr end
  end
  return ports
end

local function free_port()
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
  local used = HAVE_SS and listening() or {}
  for _ = 1, 100 do
    local p = math.random(20000, 45000)
    if not used[p] then return p end
  end
  error("no free port")
end

describe("caracal.localdb", function()
  teardown(function()
    for _, h in ipairs(homes) do cleanup(h) end
    for _, d in ipairs(temps) do sh("rm -rf -- " .. q(d)) end
  end)

  describe("home", function()
    it("makes the given folder absolute and normal", function()
      assert.equal("/x/z", localdb.home("/x/y/../z/./"))
      assert.equal(REPO .. "/some/dir", localdb.home("some/dir"))
    end)

    it("falls back to $CARACAL_HOME, then $PWD/.caracal", function()
      local d = tmpdir()
      local code = 'io.write(require("caracal.localdb").home())'
      local lp = "LUA_PATH=" .. q(LUA_DIR .. "/?.lua;;")
      local out = must(("cd %s && env -u CARACAL_HOME %s lua5.4 -e %s"):format(q(d), lp, q(code)))
      assert.equal(d .. "/.caracal", out)
      out = must(("cd %s && env CARACAL_HOME=/srv/state/ %s lua5.4 -e %s"):format(q(d), lp, q(code)))
      assert.equal("/srv/state", out)
      out = must(("cd %s && env CARACAL_HOME=rel %s lua5.4 -e %s"):format(q(d), lp, q(code)))
      assert.equal(d .. "/rel", out)
    end)
  end)

  it("creates, starts, persists, stops and destroys a cluster", function()
    local home = fresh_home()
    finally(function() cleanup(home) end)

    local info = localdb.start({ home = home, fast = true, quiet = true })
    assert.is_true(info.running)
    assert.is_true(info.created)
    assert.is_true(info.started)
    assert.is_true(info.exists)
    assert.equal(home, info.home)
    assert.equal(5432, info.port)
    assert.equal("", info.listen)
    assert.is_number(info.pid)
    assert.same({ host = info.socket_dir, port = "5432", dbname = "caracal", user = "caracal" },
      info.conninfo)
    assert.equal("postgresql://caracal@/caracal?host=" .. info.socket_dir:gsub("/", "%%2F") ..
      "&port=5432", info.url)
    assert.equal("700", trim(must("stat -c %a " .. q(info.socket_dir))))
    assert.is_true(sh("test -S " .. q(info.socket_dir .. "/.s.PGSQL.5432")))
    assert.is_true(sh("test -f " .. q(info.data .. "/PG_VERSION")))
    assert.is_true(sh("test -f " .. q(info.log)))

    if ROOT then
      -- mktemp -d made a 0700 root folder the postgres user cannot enter:
      -- the cluster was relocated and <home>/cluster links to it.
      assert.is_true(info.relocated)
      assert.matches("^/var/lib/caracal/clusters/", info.cluster)
      assert.equal(info.cluster, trim(must("readlink " .. q(home .. "/cluster"))))
      assert.matches("cannot reach", info.note)
      assert.equal("postgres", info.user)
      assert.equal("postgres", process_user(info.pid))
      assert.equal("postgres 700", trim(must("stat -c '%U %a' " .. q(info.cluster))))
      assert.equal("postgres", trim(must("stat -c %U " .. q(info.socket_dir))))
    else
      assert.is_false(info.relocated)
      assert.equal(home .. "/cluster", info.cluster)
      assert.equal(trim(must("id -un")), process_user(info.pid))
    end

    local st = localdb.status({ home = home })
    assert.is_true(st.running)
    assert.is_true(st.exists)
    assert.equal(info.pid, st.pid)
    assert.equal(info.socket_dir, st.socket_dir)

    assert.equal("1", query(info, "select 1"))
    assert.equal("off", query(info, "show fsync"))
    assert.equal("UTF8", query(info, "show server_encoding"))
    assert.is_true(tonumber(query(info, "show max_connections")) >= 100)
    -- No TCP unless asked.
    assert.equal("", query(info, "show listen_addresses"))
    if HAVE_SS and ROOT then
      assert.is_nil(must("ss -ltnp"):find("pid=" .. info.pid .. ",", 1, true))
    end
    query(info, "create table kept (x int); insert into kept values (42)")

    -- Idempotent: a running cluster is left as it is.
    local again = localdb.start({ home = home, quiet = true })
    assert.is_false(again.created)
    assert.is_false(again.started)
    assert.equal(info.pid, again.pid)
    assert.is_nil(again.warning)
    local other = localdb.start({ home = home, port = 5433, listen = "127.0.0.1", quiet = true })
    assert.equal(info.pid, other.pid)
    assert.equal(5432, other.port)
    assert.matches("port 5432", other.warning)
    assert.matches("listen_addresses", other.warning)

    local stopped = localdb.stop({ home = home })
    assert.is_true(stopped.was_running)
    assert.is_false(stopped.running)
    assert.is_false(process_alive(info.pid))
    st = localdb.status({ home = home })
    assert.is_false(st.running)
    assert.is_true(st.exists)
    assert.is_nil(st.pid)
    assert.is_false(localdb.stop({ home = home }).was_running)

    -- Persistence: the table made before the stop is still there.
    local back = localdb.start({ home = home, fast = true, quiet = true })
    assert.is_false(back.created)
    assert.is_true(back.started)
    assert.is_true(back.running)
    assert.equal(info.cluster, back.cluster)
    assert.equal("42", query(back, "select x from kept"))

    local gone = localdb.destroy({ home = home })
    assert.is_true(gone.destroyed)
    assert.is_false(process_alive(back.pid))
    assert.is_false(exists(home))
    assert.is_false(exists(info.cluster))
    st = localdb.status({ home = home })
    assert.is_false(st.running)
    assert.is_false(st.exists)
    assert.is_false(localdb.destroy({ home = home }).destroyed)
  end)

  it("listens on TCP only when asked", function()
    local home = fresh_home()
    finally(function() cleanup(home) end)
    local port = free_port()
    local info = localdb.start({ home = home, fast = true, quiet = true, listen = "127.0.0.1", port = port })
    assert.equal(port, info.port)
    assert.equal("127.0.0.1", info.listen)
    assert.equal(tostring(port), info.conninfo.port)
    assert.is_true(sh("test -S " .. q(info.socket_dir .. "/.s.PGSQL." .. port)))
    local ok, out = psql("127.0.0.1", port, "select 1")
    assert(ok, out)
    assert.equal("1", trim(out))
    assert.equal("127.0.0.1", query(info, "show listen_addresses"))
    if HAVE_SS then assert.equal("127.0.0.1:" .. port, listening()[port]) end
    assert.equal("127.0.0.1", localdb.status({ home = home }).listen)
    localdb.destroy({ home = home })
    if HAVE_SS then assert.is_nil(listening()[port]) end
  end)

  describe("command line", function()
    it("prints usage and rejects bad usage", function()
      local code, out, err = cli("--help")
      assert.equal(0, code)
      assert.matches("Usage: caracal local", out)
      assert.equal("", err)
      code, out = cli("status --home /nowhere -h")
      assert.equal(0, code)
      assert.matches("Usage:", out)

      for _, args in ipairs({ "", "frobnicate", "start --port abc", "start --port 70000",
        "start --home", "status --frob", "start stop", "status --json=1" }) do
        code, out, err = cli(args)
        assert.equal(2, code, args)
        assert.equal("", out, args)
        assert.matches("caracal local: ", err, nil, true)
      end
      local _, _, e = cli("start --port abc")
      assert.matches("--port", e, nil, true)
    end)

    it("starts, reports, stops and destroys", function()
      local home = fresh_home()
      finally(function() cleanup(home) end)
      local H = " --home " .. q(home)

      local code, out, err = cli("status" .. H)
      assert.equal(3, code)
      assert.equal("not created\n", out)

      -- A stale lock (older than 120 s) does not block.
      must("mkdir -p " .. q(home .. "/.lock") .. " && touch -d '-10 min' " .. q(home .. "/.lock"))

      code, out, err = cli("start --fast --json" .. H)
      assert.equal(0, code, err)
      local info = cjson.decode(out)
      info.pid = math.tointeger(info.pid)
      assert.is_true(info.running)
      assert.is_true(info.created)
      assert.equal(home, info.home)
      assert.equal("caracal", info.conninfo.dbname)
      if ROOT then assert.matches("^note: ", err) end
      assert.is_false(exists(home .. "/.lock"))

      code, out = cli("status" .. H)
      assert.equal(0, code)
      local pid, sock, port = out:match("^running %(pid (%d+)%), socket (.-), port (%d+)\n$")
      assert.equal(info.pid, tonumber(pid))
      assert.equal(info.socket_dir, sock)
      assert.equal("5432", port)

      code, out = cli("status --json" .. H)
      assert.equal(0, code)
      assert.is_true(cjson.decode(out).running)

      code, out = cli("start" .. H)
      assert.equal(0, code)
      assert.matches("^already running %(pid " .. info.pid .. "%)", out)

      code, out = cli("stop" .. H)
      assert.equal(0, code)
      assert.equal("stopped\n", out)
      code, out = cli("status" .. H)
      assert.equal(3, code)
      assert.equal("stopped\n", out)
      code, out = cli("status --json" .. H)
      assert.equal(3, code)
      assert.is_false(cjson.decode(out).running)

      code, out = cli("destroy" .. H)
      assert.equal(0, code)
      assert.equal("destroyed " .. home .. "\n", out)
      code, out = cli("status" .. H)
      assert.equal(3, code)
      assert.equal("not created\n", out)
    end)

    it("names the package to install when PostgreSQL is missing", function()
      local home = fresh_home()
      local code, out, err = cli("start --home " .. q(home), { env = "CARACAL_PG_BINDIR=/nonexistent" })
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("apt-get install postgresql", err, nil, true)
    end)
  end)

  it("creates the cluster once when two processes start it at once", function()
    local home = fresh_home()
    finally(function() cleanup(home) end)
    local d = tmpdir()
    local lp = "LUA_PATH=" .. q(LUA_DIR .. "/?.lua;;")
    local one = ("env %s lua5.4 %s start --fast --quiet --json --home %s"):format(lp, q(RUNNER.path), q(home))
    must(("cd / && { %s >%s & %s >%s & wait; }"):format(one, q(d .. "/a"), one, q(d .. "/b")))
    local a = cjson.decode(must("cat " .. q(d .. "/a")))
    local b = cjson.decode(must("cat " .. q(d .. "/b")))
    assert.is_true(a.running and b.running)
    assert.equal(a.pid, b.pid)
    assert.is_true(a.created ~= b.created)
  end)

  it("runs as a normal user (the server then runs as that user)", function()
    if not ROOT then
      pending("needs root to switch to the postgres user")
      return
    end
    -- A folder postgres can use, holding its own copy of the module (the
    -- repository itself may sit in a folder postgres cannot enter).
    local d = tmpdir()
    must("chmod 0755 " .. q(d))
    must(("mkdir -p %s && cp %s %s && chmod -R a+rX %s"):format(q(d .. "/lua/caracal"),
      q(LUA_DIR .. "/caracal/localdb.lua"), q(d .. "/lua/caracal/"), q(d .. "/lua")))
    local home = d .. "/home"
    homes[#homes + 1] = home
    finally(function() cleanup(home) end)
    must("mkdir " .. q(home) .. " && chown postgres: " .. q(home))
    local as = { as = "postgres", lua_dir = d .. "/lua" }
    local H = " --home " .. q(home)

    local code, out, err = cli("start --fast --json" .. H, as)
    assert.equal(0, code, err)
    local info = cjson.decode(out)
    info.pid = math.tointeger(info.pid)
    assert.is_true(info.running)
    assert.is_false(info.relocated)
    assert.equal(home .. "/cluster", info.cluster)
    assert.equal("postgres", info.user)
    assert.equal("postgres", process_user(info.pid))
    assert.equal("postgres 700", trim(must("stat -c '%U %a' " .. q(info.cluster))))
    assert.equal("postgres 700", trim(must("stat -c '%U %a' " .. q(info.socket_dir))))
    -- root reaches the private socket too.
    assert.equal("1", query(info, "select 1"))

    code = cli("status" .. H, as)
    assert.equal(0, code)
    -- root sees the same cluster and leaves it to its owner.
    local st = localdb.status({ home = home })
    assert.is_true(st.running)
    assert.equal(info.pid, st.pid)

    code, out = cli("stop" .. H, as)
    assert.equal(0, code)
    assert.equal("stopped\n", out)
    code, out = cli("destroy" .. H, as)
    assert.equal(0, code, out)
    assert.is_false(exists(home .. "/cluster"))
  end)
end)
