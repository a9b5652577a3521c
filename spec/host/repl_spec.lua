-- The administration REPL, driven like a person drives it: the real
-- binary in a real terminal (tmux), keys sent, the screen read back.
-- Every wait polls the screen against a deadline; nothing sleeps blindly.
local testdb = require "testdb"

local q = testdb.shell_quote
-- A private tmux server: the tests never touch a user's own sessions.
local SOCKET = "caracal-repl-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local tmp = (testdb.sh("mktemp -d /tmp/caracal-repl.XXXXXX")):gsub("%s+$", "")

local function tmux(args)
  return testdb.sh("tmux -L " .. SOCKET .. " " .. args)
end

local function now()
  return tonumber((testdb.sh("date +%s%N"))) / 1e9
end

local function nap()
  os.execute("sleep 0.05")
end

local Term = {}
Term.__index = Term
local count = 0

-- Start `caracal --url ...` (or with `args`) in a 160x50 terminal. The
-- shell prints EXIT=<code> when the binary ends, so the code can be read.
local function start(opts)
  opts = opts or {}
  count = count + 1
  local name = "t" .. count
  local home = tmp .. "/home" .. count
  os.execute("mkdir -p " .. q(home))
  local env = { "HOME=" .. home, "TERM=xterm" }
  if opts.history ~= false then env[#env + 1] = "CARACAL_HISTORY=" .. home .. "/history" end
  local cmd = string.format("env %s %s %s; echo EXIT=$?; sleep 60",
    table.concat(env, " "), q(testdb.bin), opts.args or ("--url " .. q(testdb.url)))
  local _, rc = tmux(string.format("new-session -d -s %s -x 160 -y 50 %s", name, q(cmd)))
  assert(rc == 0, "tmux new-session failed")
  local t = setmetatable({ name = name, home = home }, Term)
  t:wait("caracal[^\n]*>$")
  return t
end

-- The screen and its scrollback, each line without trailing blanks and
-- no blank lines at the end: the prompt "caracal> " reads "caracal>".
function Term:screen()
  local out = tmux("capture-pane -p -J -S -300 -t " .. self.name)
  return (out:gsub("[ \t]+\n", "\n"):gsub("%s+$", ""))
end

-- Poll until the screen matches the pattern.
function Term:wait(pattern, timeout)
  local deadline = now() + (timeout or 5)
  local screen
  repeat
    screen = self:screen()
    if screen:find(pattern) then return screen end
    nap()
  until now() > deadline
  error(string.format("timed out waiting for %q; the screen was:\n%s", pattern, screen), 2)
end

-- Type text literally (tmux would read "end" or "Tab" as key names).
function Term:type(text)
  tmux(string.format("send-keys -t %s -l %s", self.name, q(text)))
end

function Term:key(...)
  tmux(string.format("send-keys -t %s %s", self.name, table.concat({ ... }, " ")))
end

-- Type a line and press Enter.
function Term:line(text)
  self:type(text)
  self:key("Enter")
end

function Term:kill()
  tmux("kill-session -t " .. self.name)
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Patterns for Lua's find: escape the magic characters of literal text.
local function lit(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

describe("caracal REPL", function()
  local term

  setup(function()
    testdb.sql("drop table if exists repl_widgets")
    testdb.sql("create table repl_widgets (id serial primary key, label text not null)")
  end)

  teardown(function()
    tmux("kill-server")
    os.execute("rm -rf " .. q(tmp))
    testdb.sql("drop table if exists repl_widgets")
  end)

  after_each(function()
    if term then term:kill() end
    term = nil
  end)

  it("prints the value of an expression, and several values tab-separated", function()
    term = start()
    term:line("1+1")
    term:wait("\ncaracal> 1%+1\n2\ncaracal>$")
    term:line('=3, "x", nil')
    term:wait("\n3%s+x%s+nil\ncaracal>$")
  end)

  it("continues an incomplete chunk on a >> prompt", function()
    term = start()
    term:line("function f(x)")
    term:wait("\n>>$")
    term:line("return x*2")
    term:line("end")
    term:wait("\n>> end\ncaracal>$")
    term:line("f(21)")
    term:wait("\ncaracal> f%(21%)\n42\ncaracal>$")
  end)

  it("prints a query as an aligned table and connects only at first use", function()
    term = start()
    assert.truthy(term:screen():find("\ncaracal>$"))
    term:line([[sql("select 1 as a, 'x' as b")]])
    term:wait(lit(" a | b\n---+---\n 1 | x\n(1 row)\ncaracal@caracal>") .. "$")
  end)

  it("completes table names from the live catalog inside a string, and Lua fields", function()
    term = start()
    term:type('sql("select * from repl_wid')
    term:key("Tab")
    term:wait(lit('> sql("select * from repl_widgets') .. "$")
    term:key("C-u")
    term:type("caracal.Dec")
    term:key("Tab")
    term:wait(lit("> caracal.Decimal") .. "$")
    term:key("C-u")
    term:type("db:sessio")
    term:key("Tab")
    term:wait(lit("> db:session") .. "$")
  end)

  it("cancels a running statement with Ctrl-C and keeps the session", function()
    term = start()
    term:line('sql("select pg_sleep(30)")')
    -- Press Ctrl-C once the server is really running the statement.
    local deadline = now() + 5
    repeat
      nap()
      local running = testdb.sql("select count(*)::int as n from pg_stat_activity " ..
                                 "where query = 'select pg_sleep(30)' and state = 'active'")[1].n
    until running > 0 or now() > deadline
    local pressed = now()
    term:key("C-c")
    local screen = term:wait("canceling statement due to user request\n.-caracal@caracal>$")
    assert.is_true(now() - pressed < 1, "back at the prompt within a second")
    assert.truthy(screen:find("ERROR 57014: canceling statement due to user request", 1, true))
    term:line([[sql("select 2 as two")]])
    term:wait(lit(" two\n-----\n   2\n(1 row)\ncaracal@caracal>") .. "$")
  end)

  it("interrupts running Lua code with Ctrl-C, and clears a half-typed line", function()
    term = start()
    term:line("while true do end")
    term:wait("while true do end$")
    term:key("C-c")
    term:wait("interrupted!\nstack traceback:\n%s+stdin:1: in main chunk\ncaracal>$")
    term:type("this is not Lua")
    term:key("C-c")
    term:wait("this is not Lua%^C\ncaracal>$")
    term:line("2+3")
    term:wait("\n5\ncaracal>$")
  end)

  it("shows the transaction state in the prompt", function()
    term = start()
    term:line("begin()")
    term:wait("BEGIN\ncaracal@caracal%*>$")
    term:line([[sql("insert into repl_widgets(label) values ('a')")]])
    term:wait("INSERT 0 1\ncaracal@caracal%*>$")
    term:line([[sql("select 1/0")]])
    term:wait("ERROR 22012: division by zero\n.-caracal@caracal!>$")
    term:line("rollback()")
    term:wait("ROLLBACK\ncaracal@caracal>$")
    assert.equal(0, testdb.sql("select count(*)::int as n from repl_widgets")[1].n)
  end)

  it("commits each line by itself outside begin(), and prints notices", function()
    term = start()
    term:line([[sql("insert into repl_widgets(label) values ('kept')")]])
    term:wait("INSERT 0 1\ncaracal@caracal>$")
    assert.equal(1, testdb.sql("select count(*)::int as n from repl_widgets where label = 'kept'")[1].n)
    term:line([[sql("do $$ begin raise notice 'hello %', 42; end $$")]])
    term:wait("NOTICE:  hello 42\nDO\ncaracal@caracal>$")
    testdb.sql("delete from repl_widgets")
  end)

  it("rolls back an open transaction on Ctrl-D and exits 0", function()
    term = start()
    term:line("begin()")
    term:line([[sql("insert into repl_widgets(label) values ('gone')")]])
    term:wait("INSERT 0 1\ncaracal@caracal%*>$")
    term:key("C-d")
    term:wait("Rolling back the open transaction.\nEXIT=0$")
    assert.equal(0, testdb.sql("select count(*)::int as n from repl_widgets")[1].n)
  end)

  it("describes tables with \\d and lists them with \\dt", function()
    term = start()
    term:line([[\d repl_widgets]])
    term:wait(lit('Table "public.repl_widgets"\n') .. ".-" ..
              lit(" label  | text    | not null |\nIndexes:\n" ..
                  '    "repl_widgets_pkey" PRIMARY KEY, btree (id)\ncaracal@caracal>') .. "$")
    term:line([[\dt]])
    term:wait(lit("List of relations\n") .. ".-" .. lit(" public | repl_widgets | table |") .. ".-" ..
              "%(%d+ rows?%)\ncaracal@caracal>$")
    term:line([[\nope]])
    term:wait("invalid command \\nope\nTry \\%? for help.\ncaracal@caracal>$")
  end)

  it("saves the history in ~/.caracal_history and exits 0 on \\q", function()
    term = start({ history = false })
    term:line("1+1")
    term:line("function g()")
    term:line("end")
    term:wait("\n>> end\ncaracal>$")
    term:line([[\q]])
    term:wait("\nEXIT=0$")
    assert.equal("1+1\nfunction g()\nend\n\\q\n", read_file(term.home .. "/.caracal_history"))
  end)

  it("opens read-only transactions and says so in the prompt in read-only mode", function()
    -- The command line's --read-only lands in opts.read_only; the REPL is
    -- started with it directly here.
    term = start({ args = "-e " .. q(string.format(
      "return require('caracal.repl').run{ url = %q, read_only = true }", testdb.url)) })
    term:wait("caracal%(ro%)>$")
    term:line([[sql("insert into repl_widgets(label) values ('no')")]])
    term:wait("ERROR 25006: cannot execute INSERT in a read%-only transaction\n.-caracal@caracal%(ro%)>$")
  end)
end)
