#!/bin/bash
# One device call: build, GPU tests, compute-sanitizer, Nsight Compute, timings. Logs under $OUT (5 files).
#   STAGES=test,san,ncu,bench (default; any order) and probe, scale, winprof (opt-in); PYTEST_K (a -k expression, may
#   hold spaces), PYTEST_ARGS, SAN_PATHS, NCU_PATHS, BENCH_ARGS, BENCH_PATHS narrow each stage; PROBE_ARGS go
#   to bench/gpu_multi_probe.py (probe.log), SCALE10_ARGS to `fumjax scale`, then SCALE_ARGS to
#   bench/bench_scale.py (scale.log; either may be empty to skip it). Stage pick (after probe): the probe variant
#   fastest at drive PICK_DRIVE (default 0.005) sets FUMJAX_GPU_RUN_PATH and
#   PICK_SHIFT (use as --pre-shift \$PICK_SHIFT in SCALE_ARGS) for the later stages. ncu on the cluster
#   kernel needs NCU_TIMEOUT >= 120 (35 s was not enough on the H200).
# BUILD=0 skips the build (a second run of this script in the same command); TAG suffixes the stage logs
# (pytest$TAG.log, ncu$TAG.txt, bench$TAG.log), so runs with other settings keep their own.
# If .devsnap/head.tar exists (git archive of a commit), it is unpacked over the tree first, so the build uses
# committed sources only, not other work in progress in a shared checkout.
set -o pipefail
export PYTHONUNBUFFERED=1
stage_t() { echo "== [$((SECONDS))s] $*"; }
[[ -f .devsnap/head.tar ]] && tar -xf .devsnap/head.tar && echo "unpacked .devsnap/head.tar ($(cat .devsnap/commit 2>/dev/null))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
if [[ "${BUILD:-1}" != 0 ]]; then
  ( time python3 -m pip install -q --no-build-isolation --no-deps . ) > $OUT/build.log 2>&1 || { tail -50 $OUT/build.log; exit 1; }
  tail -3 $OUT/build.log
  stage_t built
fi
cd /tmp
STAGES=${STAGES:-test,san,ncu,bench}  # run in this order
do_test() {
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -rsxX -s --maxfail=5 $OLDPWD/tests/test_fused_gpu.py ${PYTEST_K:+-k "$PYTEST_K"} ${PYTEST_ARGS} 2>&1 \
    | tee $OUT/pytest$TAG.log | grep -E "passed|failed|xfail|XFAIL|rror|exact raster|^(cluster|block|multi) " | cut -c1-400 | tail -70
  stage_t tests
}
do_san() {
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  for tool in memcheck racecheck; do
    echo "######## $tool" >> $OUT/san.log
    timeout ${SAN_TIMEOUT:-100} compute-sanitizer --tool $tool --print-limit 20 python3 $OLDPWD/bench/sanitize_gpu_run_steps.py >> $OUT/san.log 2>&1
    echo "== $tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Hazard|done" $OUT/san.log | tail -3
  done
  unset XLA_PYTHON_CLIENT_PREALLOCATE
  stage_t sanitizer
}
do_ncu() {
  STALLS=$(for r in barrier long_scoreboard short_scoreboard mio_throttle lg_throttle membar wait branch_resolving \
    no_instruction math_pipe_throttle dispatch_stall not_selected selected misc sleeping; do
    echo -n "smsp__warp_issue_stalled_${r}_per_warp_active.pct,"; done | sed 's/,$//')
  for path in ${NCU_PATHS:-cluster block}; do
    echo "######## path $path" >> $OUT/ncu$TAG.txt
    FUMJAX_GPU_RUN_PATH=$path timeout ${NCU_TIMEOUT:-150} ncu --clock-control none -k regex:RunSteps --launch-skip 1 -c 1 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --metrics $STALLS \
      python3 $OLDPWD/bench/ncu_gpu_run_steps.py >> $OUT/ncu$TAG.txt 2>&1
    echo "== ncu $path rc=$?"
  done
  grep -E "path|RunSteps|Duration|Elapsed Cycles|SM Frequency|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|stalled|Dynamic Shared|rc=" $OUT/ncu$TAG.txt | cut -c1-150 | head -70
  stage_t ncu
}
do_probe() {
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  timeout ${PROBE_TIMEOUT:-300} python3 $OLDPWD/bench/gpu_multi_probe.py ${PROBE_ARGS} 2>&1 | tee $OUT/probe.log \
    | grep -v "^W0\|^I0"
  unset XLA_PYTHON_CLIENT_PREALLOCATE
  stage_t probe
}
do_pick() {
  eval "$(python3 - $OUT/probe.log ${PICK_DRIVE:-0.005} <<'PY'
import json, sys
rows = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["rows"]
best = min((r for r in rows if r["drive"] == float(sys.argv[2])), key=lambda r: r["ms_per_step"])
print(f"export FUMJAX_GPU_RUN_PATH={best['path']} PICK_SHIFT={best['pre_shift']}")
PY
)"
  echo "== picked FUMJAX_GPU_RUN_PATH=$FUMJAX_GPU_RUN_PATH PICK_SHIFT=$PICK_SHIFT"
}
do_scale() {
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  if [[ -n "$SCALE10_ARGS" ]]; then
    timeout ${SCALE10_TIMEOUT:-200} python3 -m fumjax.cli scale ${SCALE10_ARGS} 2>&1 | tee -a $OUT/scale.log \
      | grep -v "^W0\|^I0"
    stage_t fumjax_scale
  fi
  if [[ -n "$SCALE_ARGS" ]]; then
    timeout ${SCALE_TIMEOUT:-300} python3 $OLDPWD/bench/bench_scale.py $(eval echo ${SCALE_ARGS}) 2>&1 | tee -a $OUT/scale.log \
      | grep -v "^W0\|^I0"
    stage_t bench_scale
  fi
  unset XLA_PYTHON_CLIENT_PREALLOCATE
}
do_winprof() {
  # Every kernel of a 10-window FUM-1k learning scan (ncu, durations only), the same program's wall time,
  # and the table: where a window's time goes beyond run_steps (bench/ncu_window_profile.py).
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  W=${WINPROF_WINDOWS:-10}
  timeout ${WINPROF_TIMEOUT:-150} ncu --csv --metrics gpu__time_duration.sum \
    python3 $OLDPWD/bench/ncu_window_profile.py run $W > $OUT/winprof$TAG.csv 2> $OUT/winprof$TAG.err
  echo "== ncu winprof rc=$?"
  unset XLA_PYTHON_CLIENT_PREALLOCATE
  WALL=$(python3 $OLDPWD/bench/ncu_window_profile.py wall $W | tee -a $OUT/winprof$TAG.txt | awk '{print $2}')
  python3 $OLDPWD/bench/ncu_window_profile.py table $OUT/winprof$TAG.csv $W $WALL | tee -a $OUT/winprof$TAG.txt | head -30
  stage_t winprof
}
do_bench() {
  timeout ${BENCH_TIMEOUT:-200} python3 $OLDPWD/bench/bench_gpu_run_steps.py ${BENCH_ARGS} 2>&1 | tee $OUT/bench$TAG.log | grep -v "^W0\|^I0" | tail -45
  stage_t bench
}
for st in ${STAGES//,/ }; do do_$st; done
