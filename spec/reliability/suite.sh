# spec/reliability/suite.sh: the `reliability` suite of spec/run.sh, which
# sources this file (it uses run.sh's LUA, BUILD, out and count_tap).
# `make reliability` builds what it runs: the proxy and the load test in
# $BUILD/reliability, the ThreadSanitizer builds in $TSAN_BUILD, the fuzz
# targets in $FUZZ_BUILD.
#
#   1. busted: spec/reliability (load, crash under load, a silent network
#      in a namespace, a full disk) and the fast fault, timeout, bad-input
#      and sandbox specs of `make check`
#   2. the load test (threads), plain, then the pool tests and the load
#      test under ThreadSanitizer
#   3. each fuzz target for FUZZ_SECONDS (default 15), regressions first
#   4. the report table, from the JSON lines every case appended
run_reliability() {
  local report=$out/reliability.jsonl
  : >"$report"
  export CARACAL_RELIABILITY_REPORT=$report
  local tsan_build=${TSAN_BUILD:-$BUILD/tsan}
  local fuzz_build=${FUZZ_BUILD:-$BUILD/fuzz}
  case $tsan_build in /*) ;; *) tsan_build=$ROOT/$tsan_build ;; esac
  case $fuzz_build in /*) ;; *) fuzz_build=$ROOT/$fuzz_build ;; esac

  local log=$out/reliability.tap rc
  "${LUA[@]}" /usr/bin/busted --cpath="$BUILD/lua/?.so;" -o TAP spec/reliability spec/db/faults_spec.lua \
    spec/db/timeouts_spec.lua spec/db/security_spec.lua spec/host/sandbox_spec.lua >"$log" 2>&1
  rc=$?
  grep -E '^not ok' -A 12 "$log" | head -n 200
  count_tap "busted reliability" "$log" "$rc"

  local name t
  for t in "$BUILD/reliability/test_load" "$tsan_build/tests/test_pool" "$tsan_build/reliability/test_load"; do
    case $t in "$tsan_build"/*) name="$(basename "$t") (tsan)" ;; *) name=$(basename "$t") ;; esac
    log=$out/rel-$(echo "$name" | tr -c 'a-z0-9_\n' '-').tap
    if [ ! -x "$t" ]; then
      echo "ok 1 - $name # SKIP not built (make reliability builds it)" >"$log"
      count_tap "$name" "$log" 0
      continue
    fi
    case $name in
      *tsan*)
        env -u LD_PRELOAD -u CARACAL_RELIABILITY_REPORT TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
          CARACAL_LOAD_SECONDS=${CARACAL_LOAD_SECONDS:-3} "$t" >"$log" 2>&1
        rc=$?
        printf '{"id":"P14/tsan","fault":"%s under ThreadSanitizer","expected":"no data race reported","observed":"%s","rows":null,"ok":%s}\n' \
          "$(basename "$t")" "$([ $rc = 0 ] && echo "no report" || echo "exit $rc: see $log")" \
          "$([ $rc = 0 ] && echo true || echo false)" >>"$report" ;;
      *)
        "$t" >"$log" 2>&1
        rc=$? ;;
    esac
    grep -E '^(not ok|# )|WARNING: ThreadSanitizer' "$log" | head -n 60
    count_tap "$name" "$log" "$rc"
  done

  log=$out/fuzz.tap
  FUZZ_BUILD=$fuzz_build FUZZ_SECONDS=${FUZZ_SECONDS:-15} TAP_ONLY=1 bash spec/fuzz/run.sh >"$log" 2>&1
  rc=$?
  grep -E '^(not ok|# )' "$log" | head -n 60
  count_tap "fuzz" "$log" "$rc"

  env -u LD_PRELOAD "$CARACAL_BIN" spec/reliability/report.lua "$report" "${COLUMNS:-160}"
}
run_reliability
