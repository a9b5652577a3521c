#!/usr/bin/env bash
# Run the test suites against a fresh throwaway PostgreSQL cluster and end
# with the line `N passed, N failed` (every C and busted test counted).
#
#   bash spec/run.sh              all suites: unit c db host examples
#   bash spec/run.sh db host      only these
#
# Environment: BUILD (build dir, default build), SANITIZE=1 (the build has
# ASan/UBSan: preload the runtime into lua5.4), VALGRIND=1 (run the host
# and C tests under valgrind's leak checker).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(unit c db host examples)
out=${CARACAL_TEST_OUT:-$BUILD/test-output} # per build dir: runs may overlap
mkdir -p "$out"
export CARACAL_BIN=$BUILD/caracal
export CARACAL_ROOT=$ROOT

# Busted runs under stock lua5.4 and loads the same core the host links.
# A sanitized build runs busted inside the sanitized host instead (it has
# the core built in): preloading the ASan runtime into lua5.4 would leak
# into every child (psql, pg_ctl), which hang under it.
LUA=(lua5.4)
if [ "${SANITIZE:-0}" = 1 ]; then
  LUA=("$BUILD/caracal")
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi
export CARACAL_LUA="${LUA[*]}" # for specs that start Lua subprocesses

home=$(mktemp -d /tmp/caracal-test.XXXXXX)
cleanup() {
  "$CARACAL_BIN" local destroy --home "$home" >/dev/null 2>&1
  rm -rf "$home"
}
trap cleanup EXIT

free_port() {
  local p
  for p in $(seq 55400 55499); do
    ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  echo 55499
}

port=$(free_port)
if ! "$CARACAL_BIN" local start --home "$home" --listen 127.0.0.1 --port "$port" --fast --json \
     >"$out/cluster.json" 2>"$out/cluster.err"; then
  cat "$out/cluster.err" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
socket_dir=$("$CARACAL_BIN" -e 'print(caracal.json_decode(io.read("a")).socket_dir)' <"$out/cluster.json")

# What the tests connect to: TCP on loopback (for network faults) and the
# cluster's home (for restarts). Nothing falls back to ./.caracal.
export CARACAL_HOME=$home
export CARACAL_TEST_HOME=$home CARACAL_TEST_HOST=127.0.0.1 CARACAL_TEST_PORT=$port
export CARACAL_TEST_SOCKET=$socket_dir
export CARACAL_TEST_URL="postgresql://caracal@127.0.0.1:$port/caracal"
unset CARACAL_DATABASE_URL CARACAL_CONFIG PGHOST PGPORT PGDATABASE PGUSER PGPASSWORD

passed=0 failed=0 skipped=0

# Count a TAP stream: "ok", "not ok", "# SKIP"; a suite that exits
# non-zero without any failing test line counts as one failure.
count_tap() {
  local name=$1 file=$2 rc=$3
  local ok notok skip
  ok=$(grep -cE '^ok [0-9]+' "$file")
  notok=$(grep -cE '^not ok [0-9]+' "$file")
  skip=$(grep -cE '^ok [0-9]+ .*# (SKIP|skip)' "$file")
  ok=$((ok - skip))
  if [ "$rc" -ne 0 ] && [ "$notok" -eq 0 ]; then
    notok=1
    echo "# suite $name exited with status $rc" >&2
  fi
  passed=$((passed + ok)) failed=$((failed + notok)) skipped=$((skipped + skip))
  printf '%-28s %4d passed, %d failed%s\n' "$name" "$ok" "$notok" \
    "$([ "$skip" -gt 0 ] && echo ", $skip skipped")"
}

run_busted() {
  local dir=$1
  [ -d "spec/$dir" ] || return 0
  ls spec/"$dir"/*_spec.lua >/dev/null 2>&1 || return 0
  local log=$out/$dir.tap
  "${LUA[@]}" /usr/bin/busted --cpath="$BUILD/lua/?.so;" -o TAP "spec/$dir" >"$log" 2>&1
  local rc=$?
  grep -E '^not ok' -A 12 "$log" | head -n 200
  count_tap "busted spec/$dir" "$log" "$rc"
}

run_c() {
  local t
  for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    local name log rc
    name=$(basename "$t")
    log=$out/$name.tap
    if [ "${VALGRIND:-0}" = 1 ]; then
      valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 "$t" >"$log" 2>&1
    else
      "$t" >"$log" 2>&1
    fi
    rc=$?
    grep -E '^(not ok|# )' "$log" | head -n 60
    count_tap "$name" "$log" "$rc"
  done
}

# ---- examples: the embedding hosts built from examples/*.c, each run
# counted as one TAP test (exit status as expected). Output goes to
# $out/example-N.log and is shown only for a failure.
run_examples() {
  local log=$out/examples.tap n=0
  : >"$log"
  example() { # description expected-status command...
    local desc=$1 want=$2 rc
    shift 2
    n=$((n + 1))
    "$@" >"$out/example-$n.log" 2>&1
    rc=$?
    if [ "$rc" -eq "$want" ]; then
      echo "ok $n - $desc" >>"$log"
    else
      echo "not ok $n - $desc (exit $rc, expected $want)" >>"$log"
      sed 's/^/# /' "$out/example-$n.log" | head -n 40 >>"$log"
    fi
  }
  example "embed_host: a 60 Hz loop writes and reads spending, no tick blocked" 0 \
    "$BUILD/examples/embed_host" --url "$CARACAL_TEST_URL" --ticks 90
  example "job_runner: the example jobs succeed" 0 \
    "$BUILD/examples/job_runner" --url "$CARACAL_TEST_URL" examples/jobs/*.lua
  example "job_runner: a failing job is reported and rolled back, exit 1" 1 \
    "$BUILD/examples/job_runner" --url "$CARACAL_TEST_URL" examples/failing_job.lua
  grep -E '^(not ok|# )' "$log" | head -n 120
  count_tap "examples" "$log" 0
}

for s in "${suites[@]}"; do
  case $s in
    examples) run_examples ;;
    c) run_c ;;
    unit|db|host) run_busted "$s" ;;
    # The long fault set (`make reliability`): spec/reliability/suite.sh.
    reliability) . spec/reliability/suite.sh ;;
    # Replicas and failover, PgBouncer, a million-event partitioning (`make scale`).
    scale) run_busted scale ;;
    *) echo "spec/run.sh: unknown suite $s" >&2; exit 2 ;;
  esac
done

if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
