#!/usr/bin/env bash
# A short prompt's TTFT split into the host's launch and the device's work (ttft_probe.py), on a
# warm machine after benchmarks/h200-quant/bars_h200.sh (its fp8 engine /tmp/e-fp8 and the bf16
# checkpoint /tmp/llama-3-8b): the fp8 engine in two processes (kiln bench latency read 29 to 51
# ms at 128 tokens from process to process, benchmarks/h200-quant/h200-2026-12-07j), then the
# bf16 checkpoint; each at most 90 s, all within B seconds.
#   B=240 bash benchmarks/profile/ttft_probe.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
export PYTHONPATH=$PWD
B=${B:-240}
start_log ttft_probe.log
probe() {  # probe TAG MODEL
  local t; t=$(left 5); [ $t -lt 40 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 90 ? t : 90)) python3 benchmarks/profile/ttft_probe.py --model $2 --input-len 128 \
    --iters 20 --label $1 --json $OUT/ttft_$1.json 2>&1 | grep -E "==|median|kernels" >> $LOG
  echo "$1 at $((SECONDS - T0)) s" | tee -a $LOG
}
[ -f /tmp/e-fp8/engine.json ] && { probe fp8_a /tmp/e-fp8; probe fp8_b /tmp/e-fp8; }
[ -d /tmp/llama-3-8b ] && probe bf16 /tmp/llama-3-8b
cat $LOG
