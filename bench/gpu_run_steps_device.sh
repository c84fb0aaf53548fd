#!/bin/bash
# One device call: build, GPU tests, compute-sanitizer, timings. Logs under $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/nvidia_smi.txt
( time python3 -m pip install -q --no-build-isolation --no-deps . ) > $OUT/build.log 2>&1 || { tail -50 $OUT/build.log; exit 1; }
tail -3 $OUT/build.log
cd /tmp
STAGE=${STAGE:-all}
if [[ $STAGE == all || $STAGE == test ]]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -x -q -rsxX -s $OLDPWD/tests/test_fused_gpu.py ${PYTEST_ARGS} 2>&1 | tee $OUT/pytest.log | grep -E "passed|failed|xfail|XFAIL|error|Error|exact raster|block |multi " | tail -60
fi
if [[ $STAGE == all || $STAGE == san ]]; then
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  for tool in memcheck racecheck; do
    timeout ${SAN_TIMEOUT:-100} compute-sanitizer --tool $tool --print-limit 20 python3 $OLDPWD/bench/sanitize_gpu_run_steps.py > $OUT/san_$tool.log 2>&1
    echo "== $tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|Hazard|done" $OUT/san_$tool.log | tail -5
  done
  unset XLA_PYTHON_CLIENT_PREALLOCATE
fi
if [[ $STAGE == all || $STAGE == bench ]]; then
  timeout ${BENCH_TIMEOUT:-200} python3 $OLDPWD/bench/bench_gpu_run_steps.py ${BENCH_ARGS} 2>&1 | tee $OUT/bench.log | grep -v "^W0\|^I0"
fi
