#!/usr/bin/env bash
# A second device call after benchmarks/h200-quant/bars_h200.sh on the same machine (session of
# 2026-12-07, fifty-fourth), within B seconds: the whole GPU suite at this tree (#5 asks for it
# on the H200; it covers the prefill graphs' tests and the refactor of 217f4fd), then, with the
# time left, prefill_graphs.sh without its tests: the 128-token TTFT with and without the
# piecewise prefill graphs on the bf16 8B checkpoint and on the fp8 engine bars_h200.sh built
# (/tmp/e-fp8), then the 2048-token prompt as time allows.
# The suite gets all but TTFT_S (default 120) seconds of B: on an H100 at 4ebb5c3 it had run 1210
# of its tests, none failing, when 405 s cut it off (h100-2026-12-07q).
#   B=580 bash benchmarks/profile/call_tests_ttft.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-580}
start_log call_tests_ttft.log
timeout $(left ${TTFT_S:-120}) python3 -m pytest -q -p no:cacheprovider -n 8 -rf --durations=25 tests/gpu \
  > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log | tee -a $LOG
echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
FP8=$([ -f /tmp/e-fp8/engine.json ] && echo 1 || echo 0) TESTS=0 B=$(left 5) \
  bash benchmarks/profile/prefill_graphs.sh > /dev/null 2>&1
cat $OUT/prefill_graphs.log >> $LOG
cat $LOG
