#!/usr/bin/env bash
# Run the libFuzzer targets (spec/fuzz/fuzz_*.c, built by `make fuzz-build`
# into $FUZZ_BUILD): for each, first replay every input kept in
# spec/fuzz/regressions/<name>/ (each a crash found once, now a test),
# then fuzz for $FUZZ_SECONDS from the seeds in spec/fuzz/seeds/<name>/
# and the corpus kept in $FUZZ_BUILD/corpus/<name>/.
#
#   make fuzz FUZZ_SECONDS=600          the long run
#   make reliability                    each target for 15 s
#
# Prints one TAP line per target, then (unless TAP_ONLY=1) the line
# `N passed, N failed`. A crash leaves its input in
# $FUZZ_BUILD/artifacts/; copy it to spec/fuzz/regressions/<name>/ with
# the fix, so it is replayed from then on.
set -u
cd "$(dirname "$0")/../.."
FUZZ_BUILD=${FUZZ_BUILD:-build/fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
n=0 passed=0 failed=0
shopt -s nullglob
targets=("$FUZZ_BUILD"/fuzz_*)
if [ ${#targets[@]} -eq 0 ]; then
  echo "ok 1 - fuzz # SKIP no fuzz targets in $FUZZ_BUILD (clang not available?)"
  [ "${TAP_ONLY:-0}" = 1 ] || echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi
mkdir -p "$FUZZ_BUILD/artifacts" "$FUZZ_BUILD/logs"
for bin in "${targets[@]}"; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  short=${name#fuzz_}
  n=$((n + 1))
  log=$FUZZ_BUILD/logs/$name.log
  : >"$log"
  ok=1 why=""
  regs=(spec/fuzz/regressions/"$short"/*)
  if [ ${#regs[@]} -gt 0 ]; then
    if ! "$bin" "${regs[@]}" >>"$log" 2>&1; then ok=0 why="a regression input crashes again"; fi
  fi
  runs="?"
  if [ $ok = 1 ]; then
    corpus=$FUZZ_BUILD/corpus/$short
    mkdir -p "$corpus"
    seeds=()
    [ -d "spec/fuzz/seeds/$short" ] && seeds=("spec/fuzz/seeds/$short")
    if ! "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
         -artifact_prefix="$FUZZ_BUILD/artifacts/$short-" -print_final_stats=1 \
         "$corpus" "${seeds[@]}" >>"$log" 2>&1; then
      ok=0
      why="crash: $(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -1)"
    fi
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  fi
  if [ $ok = 1 ]; then
    passed=$((passed + 1))
    echo "ok $n - $name: ${#regs[@]} regression inputs replayed, fuzzed ${FUZZ_SECONDS} s (${runs:-?} runs), no crash"
  else
    failed=$((failed + 1))
    echo "not ok $n - $name: $why (log: $log)"
    grep -E 'ERROR|check failed|SUMMARY|fuzz_' "$log" | head -n 20 | sed 's/^/# /'
  fi
  if [ -n "${CARACAL_RELIABILITY_REPORT:-}" ]; then
    printf '{"id":"fuzz","fault":"%s: random input for %s s, from seeds and corpus","expected":"no crash, no broken promise, no hang","observed":"%s","rows":null,"ok":%s,"suite":"fuzz"}\n' \
      "$name" "$FUZZ_SECONDS" "$([ $ok = 1 ] && echo "${runs:-?} runs, no crash" || echo "FAILED: $why")" \
      "$([ $ok = 1 ] && echo true || echo false)" >>"$CARACAL_RELIABILITY_REPORT"
  fi
done
echo "1..$n"
[ "${TAP_ONLY:-0}" = 1 ] || echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
