--- The local database that starts by itself.
--
-- With no database configured, Caracal uses a private PostgreSQL cluster
-- that it creates on first use in a state folder (`.caracal/` under the
-- current directory; `CARACAL_HOME` moves it). The cluster listens on a unix
-- socket inside that folder only (no TCP port unless asked) and persists
-- between runs.
--
-- Layout of a state folder `<home>`:
--
--     <home>/cluster/                 0700, owned by the server user
--     <home>/cluster/data/            the PostgreSQL data folder
--     <home>/cluster/run/             the socket folder (0700)
--     <home>/cluster/postgresql.log   the server log
--     <home>/.lock/                   held while a process starts/stops it
--
-- PostgreSQL refuses to run as root. Run as root, every server program runs
-- as an unprivileged user (`postgres`, or `CARACAL_LOCAL_USER`) through
-- `runuser`; when that user cannot reach `<home>` (a `mktemp -d` folder, a
-- home folder...), the cluster is placed in
-- `/var/lib/caracal/clusters/<name>-<hash>` and `<home>/cluster` is a
-- symlink to it. Run as a normal user, the server runs as that user.
--
-- Environment: `CARACAL_HOME` (state folder), `CARACAL_LOCAL_USER` (server
-- user when run as root), `CARACAL_PG_BINDIR` (folder holding initdb and
-- pg_ctl; found by itself otherwise).
--
-- Connections through the socket use `trust` authentication: the socket
-- folder is private (0700), so only its owner and root can connect. When a
-- TCP address is asked for (`listen`), connections from the loopback
-- addresses (127.0.0.1, ::1) are trusted too, and others are refused.
--
-- Only the Lua 5.4 standard library and lua-cjson (for `--json`) are used;
-- the rest is done by shell commands whose every argument is quoted.
-- @module caracal.localdb

local M = {}

local RELOC_BASE = "/var/lib/caracal/clusters"
local DEFAULT_PORT = 5432
local DBNAME, SUPERUSER = "caracal", "caracal"
local SOCKET_PATH_MAX = 107 -- sizeof(sun_path) - 1 on Linux
local LOCK_WAIT, LOCK_STALE = 60, 120
-- Characters pg_ctl (which runs the server through "sh -c" with paths in
-- double quotes) or libpq (comma-separated hosts) cannot take in a path.
local AWKWARD = '[",$`\\\n\r]'
local INSTALL_HINT = "install PostgreSQL: apt-get install postgresql"

-- Shell and file helpers ----------------------------------------------------

-- Single-quote a string for /bin/sh.
local function q(s)
  return "'" .. (tostring(s):gsub("'", [['\'']])) .. "'"
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function indent(s)
  s = trim(s or "")
  if s == "" then return "  (no output)" end
  return "  " .. s:gsub("\n", "\n  ")
end

-- Run a shell command, output and errors captured together.
-- Returns ok, output, exit code.
local function run(cmd)
  local p = assert(io.popen("( " .. cmd .. " ) 2>&1", "r"))
  local out = p:read("a") or ""
  local ok, _, code = p:close()
  return ok == true, out, code
end

-- Run a command that must succeed; raise an error naming it otherwise.
local function must(cmd, what)
  local ok, out, code = run(cmd)
  if not ok then
    error(("localdb: %s failed (exit %s)\n  command: %s\n%s"):format(
      what, tostring(code), cmd, indent(out)), 0)
  end
  return out
end

local function test(flag, path)
  return (run("test " .. flag .. " " .. q(path)))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, s)
  local f, err = io.open(path, "wb")
  if not f then error("localdb: cannot write " .. path .. ": " .. tostring(err), 0) end
  f:write(s)
  f:close()
end

-- The last n lines of a (possibly big) file, or a placeholder.
local function tail(path, n)
  local f = io.open(path, "rb")
  if not f then return "  (no log at " .. path .. ")" end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - 65536))
  local s = f:read("a") or ""
  f:close()
  local lines = {}
  for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local first = math.max(1, #lines - n + 1)
  return indent(table.concat(lines, "\n", first, #lines))
end

-- FNV-1a 64, first 10 hex digits: a short stable name for a path.
local function short_hash(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do
    h = (h ~ s:byte(i)) * 0x100000001b3
  end
  return ("%016x"):format(h):sub(1, 10)
end

local function normalize(path)
  local parts = {}
  for seg in path:gmatch("[^/]+") do
    if seg == ".." then
      parts[#parts] = nil
    elseif seg ~= "." then
      parts[#parts + 1] = seg
    end
  end
  return "/" .. table.concat(parts, "/")
end

local function cwd()
  local pwd = os.getenv("PWD")
  if pwd and pwd:sub(1, 1) == "/" and run("test " .. q(pwd) .. " -ef .") then
    return pwd
  end
  return trim(must("pwd", "pwd"))
end

local function percent_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- A quoted string for postgresql.conf.
local function conf_str(s)
  return "'" .. s:gsub("\\", "\\\\"):gsub("'", "''") .. "'"
end

-- Identity -------------------------------------------------------------------

local uid_cache
local function is_root()
  if uid_cache == nil then uid_cache = trim(must("id -u", "id -u")) end
  return uid_cache == "0"
end

local function current_user()
  return trim(must("id -un", "id -un"))
end

local function owner_of(path)
  local ok, out = run("stat -c %U -- " .. q(path))
  if ok then return trim(out) end
  return nil
end

-- Is the process with this pid alive (whoever owns it)?
local function alive(pid)
  local f = io.open("/proc/self/stat", "rb")
  if f then
    f:close()
    local g = io.open("/proc/" .. pid .. "/stat", "rb")
    if not g then return false end
    local stat = g:read("a") or ""
    g:close()
    -- "pid (comm) state ...": a zombie (exited, not reaped yet) is gone.
    local state = stat:match("%)%s+(%a)[^)]*$")
    return state ~= "Z" and state ~= "X"
  end
  local ok, out = run("kill -0 " .. pid)
  return ok or out:find("ermi") ~= nil -- EPERM: exists, not ours
end

local pid_cache
local function my_pid()
  if not pid_cache then pid_cache = trim(must("echo $PPID", "echo $PPID")) end
  return pid_cache
end

-- Who runs the server programs. ctx.runas is the user to switch to (root
-- only), nil to run them as ourselves.
local function server_ctx(L)
  if not is_root() then
    return { user = current_user() }
  end
  local user
  for _, p in ipairs({ L.data, L.cluster }) do
    if test("-d", p) then
      user = owner_of(p)
      break
    end
  end
  if not user or user == "root" or user:match("^%d+$") then
    user = os.getenv("CARACAL_LOCAL_USER")
    if not user or user == "" then user = "postgres" end
  end
  if user == "root" then
    error("localdb: CARACAL_LOCAL_USER must name an unprivileged user, not root", 0)
  end
  if not run("id -u " .. q(user)) then
    error(("localdb: the server user %q does not exist (PostgreSQL refuses to run as root); " ..
      "%s (it creates the postgres user) or set CARACAL_LOCAL_USER"):format(user, INSTALL_HINT), 0)
  end
  if not run("command -v runuser") then
    error("localdb: runuser not found (needed to run PostgreSQL as " .. user ..
      " when run as root): apt-get install util-linux", 0)
  end
  local group = trim(must("id -gn " .. q(user), "id -gn"))
  return { user = user, runas = user, group = group }
end

-- The command line running cmd as the server user, from /. The server
-- never inherits the client's LD_PRELOAD (a sanitizer runtime preloaded
-- for the tests would hang or break postgres).
local function as(ctx, cmd)
  if ctx.runas then
    return "cd / && env -u LD_PRELOAD runuser -u " .. q(ctx.runas) .. " -- " .. cmd
  end
  return "cd / && env -u LD_PRELOAD " .. cmd
end

-- PostgreSQL binaries --------------------------------------------------------

local bin_cache = {}
local function find_bin(L)
  local want = L and read_file(L.data .. "/PG_VERSION")
  want = want and trim(want) or ""
  if bin_cache[want] then return bin_cache[want] end
  local function usable(dir)
    return dir and dir ~= "" and test("-x", dir .. "/initdb") and test("-x", dir .. "/pg_ctl")
  end
  local function pack(dir)
    local psql = dir .. "/psql"
    if not test("-x", psql) then psql = "psql" end
    local b = { dir = dir, initdb = dir .. "/initdb", pg_ctl = dir .. "/pg_ctl", psql = psql }
    bin_cache[want] = b
    return b
  end
  local env = os.getenv("CARACAL_PG_BINDIR")
  if env and env ~= "" then
    if usable(env) then return pack(env) end
    error("localdb: CARACAL_PG_BINDIR=" .. env .. " holds no initdb and pg_ctl; " ..
      "fix it, or unset it and " .. INSTALL_HINT, 0)
  end
  if want ~= "" and usable("/usr/lib/postgresql/" .. want .. "/bin") then
    return pack("/usr/lib/postgresql/" .. want .. "/bin")
  end
  local ok, out = run("ls -1 /usr/lib/postgresql")
  if ok then
    local versions = {}
    for v in out:gmatch("[^\n]+") do
      if tonumber(v:match("^%d+%.?%d*")) then versions[#versions + 1] = v end
    end
    table.sort(versions, function(a, b)
      return tonumber(a:match("^%d+%.?%d*")) > tonumber(b:match("^%d+%.?%d*"))
    end)
    for _, v in ipairs(versions) do
      local dir = "/usr/lib/postgresql/" .. v .. "/bin"
      if usable(dir) then return pack(dir) end
    end
  end
  local ok2, dir = run("pg_config --bindir")
  if ok2 and usable(trim(dir)) then return pack(trim(dir)) end
  local ok3, path = run("command -v initdb")
  if ok3 then
    local d = trim(path):match("^(.*)/[^/]+$")
    if usable(d) then return pack(d) end
  end
  error("localdb: the PostgreSQL server programs (initdb, pg_ctl) were not found in " ..
    "/usr/lib/postgresql/*/bin, pg_config --bindir or PATH; " .. INSTALL_HINT, 0)
end

local locale_cache
local function pick_locale()
  if not locale_cache then
    locale_cache = "C"
    local ok, out = run("locale -a")
    if ok then
      for line in out:gmatch("[^\n]+") do
        local l = trim(line):lower()
        if l == "c.utf8" or l == "c.utf-8" then locale_cache = "C.UTF-8" break end
      end
    end
  end
  return locale_cache
end

-- Layout ---------------------------------------------------------------------

local function relocated_name(home)
  local base = home:match("([^/]+)$") or ""
  if base == ".caracal" or base == "caracal" then
    base = home:match("([^/]+)/[^/]+$") or ""
  end
  base = base:gsub("^%.+", ""):gsub("[^%w_.-]", "_"):sub(1, 24)
  if base == "" then base = "caracal" end
  return base .. "-" .. short_hash(home)
end

-- Fill in the paths that follow from L.cluster.
local function fill(L)
  L.data = L.cluster .. "/data"
  L.log = L.cluster .. "/postgresql.log"
  L.socket_dir = L.cluster .. "/run"
  L.socket_fallback = false
  if #(L.socket_dir .. "/.s.PGSQL.65535") > SOCKET_PATH_MAX then
    -- A unix socket path is at most 107 bytes: use a short private folder.
    L.socket_dir = "/tmp/caracal-" .. short_hash(L.home)
    L.socket_fallback = true
  end
  L.exists = read_file(L.data .. "/PG_VERSION") ~= nil
  return L
end

local function layout(home)
  local L = { home = home, link = home .. "/cluster", lock = home .. "/.lock", relocated = false }
  L.cluster = L.link
  if test("-L", L.link) then
    local target = trim(must("readlink -- " .. q(L.link), "readlink"))
    if target:sub(1, 1) ~= "/" then target = normalize(home .. "/" .. target) end
    L.cluster = target
    L.relocated = true
  end
  return fill(L)
end

-- Settings written by start, read back for status.
local function read_conf(L)
  local s = read_file(L.data .. "/caracal.conf")
  if not s then return {} end
  local c = {}
  c.port = tonumber(s:match("\nport = (%d+)"))
  local listen = s:match("\nlisten_addresses = '(.-)'\n")
  if listen then c.listen = listen:gsub("''", "'"):gsub("\\\\", "\\") end
  return c
end

-- postmaster.pid of a live server: pid, port, socket dir, first listen address.
local function pidinfo(L)
  local s = read_file(L.data .. "/postmaster.pid")
  if not s then return nil end
  local lines = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  local pid = math.tointeger(tonumber(lines[1] or ""))
  if not pid or not alive(pid) then return nil end
  return {
    pid = pid,
    port = tonumber(lines[4] or ""),
    socket_dir = lines[5] ~= "" and lines[5] or nil,
    listen = lines[6] or "",
    status = lines[8] and trim(lines[8]) or nil,
  }
end

local function info_of(L, pi)
  local conf = read_conf(L)
  local port = (pi and pi.port) or conf.port or DEFAULT_PORT
  local sock = (pi and pi.socket_dir) or L.socket_dir
  local listen = conf.listen or (pi and pi.listen) or ""
  return {
    home = L.home,
    cluster = L.cluster,
    data = L.data,
    log = L.log,
    socket_dir = sock,
    port = port,
    listen = listen,
    pid = pi and pi.pid or nil,
    running = pi ~= nil,
    exists = L.exists,
    relocated = L.relocated,
    conninfo = { host = sock, port = tostring(port), dbname = DBNAME, user = SUPERUSER },
    url = ("postgresql://%s@/%s?host=%s&port=%d"):format(SUPERUSER, DBNAME, percent_encode(sock), port),
  }
end

-- The lock -------------------------------------------------------------------

local function lock_stale(lock)
  local ok, out = run("stat -c %Y -- " .. q(lock))
  local mtime = ok and tonumber(trim(out))
  if not mtime then return false end
  if os.time() - mtime > LOCK_STALE then return true end
  local pid = tonumber(trim(read_file(lock .. "/pid") or ""))
  return pid ~= nil and math.tointeger(pid) ~= nil and not alive(math.tointeger(pid))
end

local function acquire(L)
  if not test("-w", L.home) then
    error("localdb: cannot write to the state folder " .. L.home, 0)
  end
  local deadline = os.time() + LOCK_WAIT
  while true do
    if run("mkdir -- " .. q(L.lock)) then
      write_file(L.lock .. "/pid", my_pid() .. "\n")
      return
    end
    if lock_stale(L.lock) then
      run("rm -rf -- " .. q(L.lock))
    elseif os.time() >= deadline then
      error(("localdb: another process holds %s (waited %d s); remove it if no Caracal " ..
        "process is starting or stopping this database"):format(L.lock, LOCK_WAIT), 0)
    else
      run("sleep 0.1")
    end
  end
end

local function with_lock(L, fn)
  acquire(L)
  local ok, res = pcall(fn)
  run("rm -rf -- " .. q(L.lock))
  if not ok then error(res, 0) end
  return res
end

-- Cluster creation -----------------------------------------------------------

-- Make a folder owned by the server user with the given mode.
local function make_owned(ctx, path, mode)
  must("mkdir -p -- " .. q(path), "mkdir " .. path)
  if ctx.runas then
    must("chown " .. q(ctx.runas .. ":" .. ctx.group) .. " -- " .. q(path), "chown " .. path)
  end
  must("chmod " .. mode .. " -- " .. q(path), "chmod " .. path)
end

-- Make sure L.cluster exists and the server user can use it. Returns a note
-- when the cluster was relocated now.
local function prepare_cluster(L, ctx)
  local note
  if not test("-e", L.link) and not test("-L", L.link) then
    local awkward = L.cluster:find(AWKWARD)
    if awkward and not ctx.runas then
      error(("localdb: the state folder %s holds a character (%s) that PostgreSQL's tools " ..
        "cannot take in a path; pick another with --home or CARACAL_HOME"):format(
        L.home, L.cluster:sub(awkward, awkward)), 0)
    end
    if ctx.runas and (awkward or not run(as(ctx, "test -x " .. q(L.home)))) then
      -- The server user cannot traverse the state folder (or pg_ctl could
      -- not take its path): relocate.
      if not test("-d", RELOC_BASE) then
        must("mkdir -p -- " .. q(RELOC_BASE) .. " && chmod 0755 -- /var/lib/caracal " .. q(RELOC_BASE),
          "creating " .. RELOC_BASE)
      end
      if not run(as(ctx, "test -x " .. q(RELOC_BASE))) then
        error("localdb: user " .. ctx.user .. " cannot reach " .. RELOC_BASE ..
          " (make /var/lib/caracal and it mode 0755)", 0)
      end
      L.cluster = RELOC_BASE .. "/" .. relocated_name(L.home)
      L.relocated = true
      fill(L)
      make_owned(ctx, L.cluster, "0700")
      must("ln -sfn -- " .. q(L.cluster) .. " " .. q(L.link), "linking " .. L.link)
      note = ("user %s cannot %s %s; cluster placed in %s (linked from %s)"):format(
        ctx.user, awkward and "start a server under" or "reach", L.home, L.cluster, L.link)
    else
      make_owned(ctx, L.cluster, "0700")
    end
  elseif not test("-d", L.cluster) then
    -- A link whose target is gone (wiped /var/lib/caracal): make a new one.
    make_owned(ctx, L.cluster, "0700")
  end
  if ctx.runas and not run(as(ctx, "test -x " .. q(L.cluster) .. " && test -w " .. q(L.cluster))) then
    error(("localdb: user %s cannot use %s; fix its permissions or destroy it " ..
      "(caracal local destroy --home %s)"):format(ctx.user, L.cluster, L.home), 0)
  end
  return note
end

local function ensure_socket_dir(L, ctx)
  must(as(ctx, "mkdir -p -- " .. q(L.socket_dir) .. " && chmod 0700 -- " .. q(L.socket_dir)),
    "creating the socket folder")
  if L.socket_fallback and owner_of(L.socket_dir) ~= ctx.user then
    error("localdb: " .. L.socket_dir .. " belongs to another user", 0)
  end
end

local function initdb(L, ctx, bin, fast)
  if test("-e", L.data) then
    -- Leftover of an initdb that did not finish (no PG_VERSION).
    must(as(ctx, "rm -rf -- " .. q(L.data)), "removing an unfinished data folder")
  end
  local cmd = table.concat({
    q(bin.initdb), "-D", q(L.data), "-U", q(SUPERUSER), "-A", "trust",
    "--encoding=UTF8", "--locale=" .. pick_locale(), fast and "--no-sync" or "",
  }, " ")
  must(as(ctx, cmd), "initdb")
  L.exists = true
end

local function write_conf(L, ctx, port, listen, fast)
  local lines = {
    "# Written by Caracal (lua/caracal/localdb.lua) at every start: edits are lost.",
    "# Put your own settings in caracal.local.conf next to this file.",
    "unix_socket_directories = " .. conf_str('"' .. L.socket_dir:gsub('"', '""') .. '"'),
    "unix_socket_permissions = 0700",
    "listen_addresses = " .. conf_str(listen),
    "port = " .. port,
    "max_connections = 100",
    "logging_collector = off",
  }
  if fast then
    lines[#lines + 1] = "fsync = off"
    lines[#lines + 1] = "synchronous_commit = off"
    lines[#lines + 1] = "full_page_writes = off"
  end
  if read_file(L.data .. "/caracal.local.conf") then
    lines[#lines + 1] = "include 'caracal.local.conf'"
  end
  local path = L.data .. "/caracal.conf"
  write_file(path, "\n" .. table.concat(lines, "\n") .. "\n")
  if ctx.runas then
    must("chown " .. q(ctx.runas .. ":" .. ctx.group) .. " -- " .. q(path), "chown " .. path)
  end
  must("chmod 0600 -- " .. q(path), "chmod " .. path)
  local main_conf = L.data .. "/postgresql.conf"
  local s = read_file(main_conf)
  if not s then error("localdb: cannot read " .. main_conf, 0) end
  if not s:find("\ninclude 'caracal.conf'", 1, true) then
    local f = assert(io.open(main_conf, "ab"))
    f:write("\n# Caracal's settings (rewritten at every start)\ninclude 'caracal.conf'\n")
    f:close()
  end
end

local function psql_cmd(ctx, bin, sock, port, db, sql)
  return as(ctx, table.concat({ q(bin.psql), "-X", "-q", "-h", q(sock), "-p", tostring(port),
    "-U", q(SUPERUSER), "-d", q(db), "-v", "ON_ERROR_STOP=1", "-Atc", q(sql) }, " "))
end

local function ensure_database(ctx, bin, sock, port)
  local out = must(psql_cmd(ctx, bin, sock, port, "postgres",
    "SELECT 1 FROM pg_database WHERE datname = '" .. DBNAME .. "'"), "looking for database " .. DBNAME)
  if trim(out) ~= "1" then
    must(psql_cmd(ctx, bin, sock, port, "postgres", "CREATE DATABASE " .. DBNAME), "CREATE DATABASE")
  end
end

local function check_port(port)
  local n = math.tointeger(tonumber(port))
  if not n or n < 1 or n > 65535 then
    error("localdb: port must be an integer from 1 to 65535, not " .. tostring(port), 0)
  end
  return n
end

-- Public API -------------------------------------------------------------------

--- The absolute path of the state folder.
-- @param dir optional folder (relative to the current directory when not absolute)
-- @return `dir`, else `$CARACAL_HOME`, else `$PWD/.caracal`, absolute and normalized
function M.home(dir)
  local h = dir
  if h == nil or h == "" then
    h = os.getenv("CARACAL_HOME")
    if h == "" then h = nil end
  end
  if h == nil then return normalize(cwd() .. "/.caracal") end
  if h:sub(1, 1) ~= "/" then h = cwd() .. "/" .. h end
  return normalize(h)
end

--- Create the cluster when missing and start it when stopped.
-- A running cluster is left as it is: when `port` or `listen` differ from
-- the running server's, the returned info says so in `warning`.
-- @param opts optional table: `home` (state folder, see `home`), `port`
-- (number in the socket name `.s.PGSQL.<port>` and the TCP port, default
-- 5432), `listen` (listen_addresses, default "" for no TCP), `fast` (fsync,
-- synchronous_commit and full_page_writes off, for throwaway clusters),
-- `quiet` (no note on stderr)
-- @return info table: `home`, `cluster`, `data`, `log`, `socket_dir`, `port`,
-- `listen`, `pid`, `running` (true), `exists` (true), `created` (initdb ran
-- now), `started` (the server was started now), `relocated`, `user` (the
-- server's OS user), `conninfo` (libpq keywords), `url`, and optional
-- `note` and `warning`
-- @raise an error with the failed command's output (and the log's last
-- lines when the server did not start)
function M.start(opts)
  opts = opts or {}
  local home = M.home(opts.home)
  local port = opts.port ~= nil and check_port(opts.port) or nil
  local listen = opts.listen
  if listen ~= nil and (type(listen) ~= "string" or listen:find("[\n\r]")) then
    error("localdb: listen must be a string of addresses", 0)
  end
  must("mkdir -p -- " .. q(home), "creating the state folder " .. home)
  local L = layout(home)
  return with_lock(L, function()
    L = layout(home) -- another process may have created it while we waited
    local ctx = server_ctx(L)
    local pi = L.exists and pidinfo(L) or nil
    if pi then
      local bin = find_bin(L)
      local info = info_of(L, pi)
      local diffs = {}
      if port and port ~= info.port then
        diffs[#diffs + 1] = ("port %d (asked for %d)"):format(info.port, port)
      end
      if listen and listen ~= info.listen then
        diffs[#diffs + 1] = ("listen_addresses '%s' (asked for '%s')"):format(info.listen, listen)
      end
      if #diffs > 0 then
        info.warning = "the local database is already running with " .. table.concat(diffs, " and ") ..
          "; stop it and start it again to change that"
      end
      ensure_database(ctx, bin, info.socket_dir, info.port)
      info.created, info.started, info.user = false, false, owner_of(L.data) or ctx.user
      return info
    end
    local bin = find_bin(L)
    local note = prepare_cluster(L, ctx)
    if note and not opts.quiet then io.stderr:write("note: ", note, "\n") end
    local created = false
    if not L.exists then
      initdb(L, ctx, bin, opts.fast)
      created = true
    end
    port = port or DEFAULT_PORT
    listen = listen or ""
    ensure_socket_dir(L, ctx)
    write_conf(L, ctx, port, listen, opts.fast)
    local cmd = as(ctx, table.concat({ q(bin.pg_ctl), "start", "-D", q(L.data), "-l", q(L.log),
      "-w", "-t", "60" }, " "))
    local ok, out, code = run(cmd)
    if not ok then
      error(("localdb: the server did not start (pg_ctl exit %s)\n  command: %s\n%s\n" ..
        "last lines of %s:\n%s"):format(tostring(code), cmd, indent(out), L.log, tail(L.log, 20)), 0)
    end
    pi = pidinfo(L)
    if not pi then
      error("localdb: pg_ctl started the server but it is not running\nlast lines of " ..
        L.log .. ":\n" .. tail(L.log, 20), 0)
    end
    local info = info_of(L, pi)
    ensure_database(ctx, bin, info.socket_dir, info.port)
    info.created, info.started, info.user, info.note = created, true, ctx.user, note
    return info
  end)
end

--- Stop the local database; fine when it is not running.
-- @param opts optional table: `home`, `mode` ("fast", the default, or
-- "immediate", which simulates a crash, or "smart")
-- @return info table (see `status`) with `running` false and `was_running`
-- @raise an error with pg_ctl's output when the server does not stop
function M.stop(opts)
  opts = opts or {}
  local mode = opts.mode or "fast"
  if mode ~= "fast" and mode ~= "immediate" and mode ~= "smart" then
    error("localdb: stop mode must be fast, immediate or smart, got " .. tostring(mode), 0)
  end
  local home = M.home(opts.home)
  local L = layout(home)
  if not test("-d", home) or not L.exists then
    local info = info_of(L, nil)
    info.was_running = false
    return info
  end
  return with_lock(L, function()
    L = layout(home)
    local pi = L.exists and pidinfo(L) or nil
    if pi then
      local ctx = server_ctx(L)
      local bin = find_bin(L)
      must(as(ctx, table.concat({ q(bin.pg_ctl), "stop", "-D", q(L.data), "-m", mode,
        "-w", "-t", "60" }, " ")), "pg_ctl stop")
    end
    local info = info_of(L, nil)
    info.was_running = pi ~= nil
    return info
  end)
end

--- Describe the local database without changing anything.
-- @param opts optional table: `home`
-- @return info table: `home`, `cluster`, `data`, `log`, `socket_dir`,
-- `port`, `listen`, `pid` (when running), `running`, `exists`, `relocated`,
-- `conninfo`, `url`
function M.status(opts)
  opts = opts or {}
  local L = layout(M.home(opts.home))
  return info_of(L, L.exists and pidinfo(L) or nil)
end

--- Stop the local database and remove it: the cluster folder, its
-- relocated folder, the lock, and the state folder itself when nothing
-- else is left in it.
-- @param opts optional table: `home`
-- @return table: `home`, `destroyed` (something was removed), `removed`
-- (list of paths), optional `warning`
function M.destroy(opts)
  opts = opts or {}
  local home = M.home(opts.home)
  if not test("-d", home) then
    return { home = home, destroyed = false, removed = {} }
  end
  local L = layout(home)
  local result = with_lock(L, function()
    L = layout(home)
    local res = { home = home, removed = {} }
    local pi = L.exists and pidinfo(L) or nil
    if pi then
      local ctx = server_ctx(L)
      local bin = find_bin(L)
      must(as(ctx, table.concat({ q(bin.pg_ctl), "stop", "-D", q(L.data), "-m", "immediate",
        "-w", "-t", "60" }, " ")), "pg_ctl stop")
    end
    local function remove(path)
      must("rm -rf -- " .. q(path), "removing " .. path)
      res.removed[#res.removed + 1] = path
    end
    if L.relocated then
      if L.cluster:sub(1, #RELOC_BASE + 1) == RELOC_BASE .. "/" then
        if test("-e", L.cluster) then remove(L.cluster) end
      else
        res.warning = "kept " .. L.cluster .. " (the link's target is not under " .. RELOC_BASE .. ")"
      end
      remove(L.link)
    elseif test("-e", L.link) then
      remove(L.link)
    end
    if L.socket_fallback and test("-e", L.socket_dir) then remove(L.socket_dir) end
    return res
  end)
  -- The lock is gone now: remove the state folder when nothing else is in it.
  if run("rmdir -- " .. q(home)) then result.removed[#result.removed + 1] = home end
  result.destroyed = #result.removed > 0
  return result
end

-- The command line -------------------------------------------------------------

M.USAGE = [[
Usage: caracal local COMMAND [OPTIONS]

Manage the local PostgreSQL cluster Caracal uses when no database is
configured. It lives in a state folder (.caracal/ under the current
directory, or $CARACAL_HOME) and listens on a unix socket there only.

Commands:
  start     create the cluster when missing, start it when stopped
  stop      stop it (fast shutdown)
  status    show whether it runs (exit 0 when running, 3 when not)
  destroy   stop it and remove it with all its data

Options:
  --home DIR      state folder (default $CARACAL_HOME or ./.caracal)
  --port N        port, also the socket's name .s.PGSQL.N (default 5432)
  --listen ADDR   also listen on TCP at ADDR (e.g. 127.0.0.1; loopback
                  connections are trusted); default: unix socket only
  --fast          no fsync (for throwaway test clusters)
  --json          print one JSON object
  -q, --quiet     no notes on stderr
  -h, --help      show this help

Run as root, the server runs as CARACAL_LOCAL_USER (default postgres).
]]

local function json_encode(v)
  local cjson = require("cjson").new()
  -- lua-cjson escapes "/" as "\/": valid, but paths read better without.
  return (cjson.encode(v):gsub("\\/", "/"))
end

local function describe(info)
  local s = ("(pid %d), socket %s, port %d"):format(info.pid or 0, info.socket_dir, info.port)
  if info.listen and info.listen ~= "" then s = s .. ", tcp " .. info.listen end
  return s
end

--- The `caracal local` command line. Prints to stdout (errors and notes
-- to stderr) and never exits the process.
-- @param args list of arguments after `caracal local` (a leading "local"
-- is skipped): a command (start, stop, status, destroy) and options
-- @return exit code: 0 ok (status: running), 3 status: stopped or not
-- created, 1 failure, 2 usage error
function M.main(args)
  args = args or {}
  local out, err = io.stdout, io.stderr
  for _, a in ipairs(args) do
    if a == "-h" or a == "--help" then
      out:write(M.USAGE)
      return 0
    end
  end
  local function usage(msg)
    err:write("caracal local: ", msg, "\nRun 'caracal local --help' for usage.\n")
    return 2
  end
  local cmd, opts, json = nil, {}, false
  local i = 1
  if args[1] == "local" then i = 2 end
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if name then a = name end
    local function value()
      if inline then return inline end
      i = i + 1
      return args[i]
    end
    if a == "--home" or a == "--port" or a == "--listen" then
      local v = value()
      if v == nil then return usage(a .. " needs a value") end
      if a == "--home" then
        if v == "" then return usage("--home needs a folder") end
        opts.home = v
      elseif a == "--port" then
        local n = math.tointeger(tonumber(v))
        if not n or n < 1 or n > 65535 or not v:match("^%d+$") then
          return usage("--port needs a number from 1 to 65535, not '" .. v .. "'")
        end
        opts.port = n
      else
        opts.listen = v
      end
    elseif a == "--fast" or a == "--json" or a == "--quiet" or a == "-q" then
      if inline then return usage(a .. " takes no value") end
      if a == "--fast" then opts.fast = true
      elseif a == "--json" then json = true
      else opts.quiet = true end
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return usage("unknown option " .. a)
    elseif cmd == nil then
      cmd = a
    else
      return usage("unexpected argument '" .. a .. "'")
    end
    i = i + 1
  end
  if cmd == nil then return usage("missing command (start, stop, status or destroy)") end
  local actions = { start = true, stop = true, status = true, destroy = true }
  if not actions[cmd] then
    return usage("unknown command '" .. cmd .. "' (start, stop, status or destroy)")
  end

  local ok, res = pcall(M[cmd], opts)
  if not ok then
    err:write("caracal local ", cmd, ": ", (tostring(res):gsub("^localdb: ", "")), "\n")
    return 1
  end
  local info = res
  if json then
    out:write(json_encode(info), "\n")
  elseif cmd == "start" then
    if info.created then out:write("created a cluster in ", info.cluster, "\n") end
    out:write(info.started and "started " or "already running ", describe(info), "\n")
    out:write("url: ", info.url, "\n")
  elseif cmd == "stop" then
    out:write(info.was_running and "stopped" or (info.exists and "not running" or "not created"), "\n")
  elseif cmd == "status" then
    if info.running then
      out:write("running ", describe(info), "\n")
    else
      out:write(info.exists and "stopped" or "not created", "\n")
    end
  elseif cmd == "destroy" then
    out:write(info.destroyed and ("destroyed " .. info.home) or ("nothing to destroy in " .. info.home), "\n")
  end
  if info.warning then err:write("warning: ", info.warning, "\n") end
  if cmd == "status" and not info.running then return 3 end
  return 0
end

return M
