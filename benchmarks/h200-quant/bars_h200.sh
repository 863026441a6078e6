#!/usr/bin/env bash
# Prepared in the sessions of 2026-12-07 (forty-sixth, forty-seventh) for the next H200 (at most
# B = 580 s; on another card it stops unless ANY_CARD=1): the bars of #7 and #5 that the last
# sessions' changes may move, with #7's int4-wo batch 1 on the int4 LM head (on an H100 that
# head took the int4 engine from 384.6 / 385.0 to 423.7 / 424.0 tok/s, benchmarks/head/), on
# this tree and one machine. The builds skip step tuning and the
# kernel pack to save time (the pack only speeds a later machine's start-up; step tuning moved
# the H100's int4 step by 0.8%).
# 1. the fp8 8B engine (fp8 LM head, --max-batch-size 1024) and its batch 1 128/256 first, on a
#    card that has run nothing else (h200-2026-12-07i read 331.3 tok/s after a throughput run,
#    h200-2026-12-07j 380 on another H200 before any);
# 2. the int4-wo engine (int4 LM head) and its batch 1 (ab_latency.py: as built, and with
#    KILN_GEMV_EARLY_GROUP=1): never run on an H200 with that head;
# 3. as time allows, #7's fp8 1000 x 128/128 once (tp_run.sh), fp8 batch 1 again after it, the
#    bf16 checkpoint's batch 1 and 1000 x 128/128 (#5; bf16 KV cache, the bar's setting), the LM
#    head sweep (benchmarks/head/head_sweep.sh). With B = 575 the int4 runs leave no time for 3.
#   bash benchmarks/h200-quant/bars_h200.sh     (OUT set by the device tool)
#   SKIP_INT4=1 B=460 bash benchmarks/h200-quant/bars_h200.sh   (a short budget: no int4-wo engine)
#   SHORT=1 B=300 bash benchmarks/h200-quant/bars_h200.sh       (shorter: the fp8 engine's runs alone)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-580}
start_log bars_h200.log
h200_only
checkpoint
build() {  # build ENGINE LIMIT flags...
  local e=$1 t=$2; shift 2
  timeout $t python3 -m kiln.cli build $M --output $e "$@" --step-tuning-batch-sizes none --no-kernel-cache \
    --max-batch-size 1024 --eval-tokens 0 --overwrite --no-progress 2>&1 | grep -v Warning | tail -2 >> $LOG
  echo "$e at $((SECONDS - T0)) s" | tee -a $LOG
}
if [ "${SHORT:-0}" = 1 ]; then  # a short budget (B about 300): the fp8 engine, its 1000 x 128/128 once, batch 1
  build /tmp/e-fp8 $(left 130) --quant fp8 --lm-head-quant fp8
  tp_run fp8_1 $PWD /tmp/e-fp8 45
  RES=0 lat fp8 /tmp/e-fp8
  grep -E "output tok/s|decode|at .* s" $LOG; exit 0
fi
build /tmp/e-fp8 $(left 420) --quant fp8 --lm-head-quant fp8
RES=380 lat fp8 /tmp/e-fp8  # first, on a card that has run nothing else yet
# (cold builds of the int4-wo engine took 151-243 s on H100s; 189 s cut one off, h200-2026-12-07i)
[ "${SKIP_INT4:-0}" = 1 ] || build /tmp/e-int4 $(left 130) --quant int4-wo --lm-head-quant int4-wo --calib-samples 32
t=$(left 60)  # int4-wo batch 1: the defaults, and with KILN_GEMV_EARLY_GROUP=1, alternating
[ $t -ge 60 ] && [ -f /tmp/e-int4/engine.json ] && timeout $((t < 120 ? t : 120)) python3 benchmarks/ab_latency.py --model /tmp/e-int4 \
  --variants "base=;early=KILN_GEMV_EARLY_GROUP=1" --rounds 2 --json $OUT/b1_int4_ab.json 2>&1 | tail -4 >> $LOG
echo "b1 int4 at $((SECONDS - T0)) s" | tee -a $LOG
tp_run fp8_1 $PWD /tmp/e-fp8 50
RES=5 lat fp8_after /tmp/e-fp8  # after a throughput run, the order that gave 331.3 (h200-2026-12-07i)
RES=5 lat bf16 $M --dtype bfloat16
bf16_tp bf16 auto 5
t=$(left 5); [ $t -ge 100 ] && timeout $t bash benchmarks/head/head_sweep.sh > /dev/null 2>&1
grep -E "output tok/s|decode|at .* s|lm_head" $LOG $OUT/head_sweep.log 2>/dev/null
