#!/usr/bin/env bash
# The session's first H200 call (2026-12-08, fifty-fifth), within B seconds: #5's "tests/gpu passes
# on the H200" at this tree (last whole run on an H200 at 6ac49fd; since then on H100s only),
# then with the time left (BARS_S, default 240 s, kept for it) the batch-1 bars on this tree:
# the bf16 8B checkpoint (#5, 128 in / 256 out) and the fp8 engine as bars_h200.sh builds it (#7).
# On another card it stops at once (ANY_CARD=1 runs it anyway).
#   B=575 bash benchmarks/h200-quant/call_suite_bars.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-575}
start_log call_suite_bars.log
h200_only
timeout $(left ${BARS_S:-240}) python3 -m pytest -q -p no:cacheprovider -n 8 -rf --durations=25 tests/gpu \
  > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log | tee -a $LOG
echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
checkpoint
echo "checkpoint at $((SECONDS - T0)) s" | tee -a $LOG
t=$(left 45); [ $t -ge 60 ] && timeout $t python3 -m kiln.cli build $M --output /tmp/e-fp8 --quant fp8 \
  --lm-head-quant fp8 --step-tuning-batch-sizes none --no-kernel-cache --max-batch-size 1024 --eval-tokens 0 \
  --overwrite --no-progress 2>&1 | grep -v Warning | tail -2 >> $LOG
echo "fp8 engine at $((SECONDS - T0)) s" | tee -a $LOG
[ -f /tmp/e-fp8/engine.json ] && lat fp8 /tmp/e-fp8
lat bf16 $M --dtype bfloat16
(cd $OUT && ls *.json > /dev/null 2>&1 && tar czf results.tgz *.json && rm -f *.json)
cat $LOG
