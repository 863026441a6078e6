#!/usr/bin/env bash
# The session's second device call (2026-12-07, forty-eighth), after call_first.sh on the same
# machine: the GPU tests at this tree (#5 asks for them on the H200), then, as time allows, the
# bf16 checkpoint's 1000 x 128/128 with an fp8 KV cache (not #5's setting, which keeps the cache
# in bf16; it gained 5.8% on an H100 and was never run on an H200).
#   B=580 bash benchmarks/h200-quant/call_second.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-580}
start_log call_second.log
timeout $(left 110) python3 -m pytest -q -p no:cacheprovider -n 8 -rf --durations=25 tests/gpu > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log | tee -a $LOG
echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
checkpoint
bf16_tp bf16_kvfp8 fp8 5
cat $LOG
