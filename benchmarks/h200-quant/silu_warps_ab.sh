#!/usr/bin/env bash
# Prepared in the session of 2026-12-07 (forty-sixth), any Hopper card (at most B = 420 s):
# 1. silu_quant_bench.py: the fused SiLU-mul + fp8 quant at 1000 x 14336 with 4 to 32 warps;
# 2. #7's fp8 1000 x 128/128 on this tree, KILN_SILU_QUANT_WARPS unset (16 warps) and 32,
#    alternating (one engine: fp8, fp8 LM head, no step tuning, --max-batch-size 1024).
#   bash benchmarks/h200-quant/silu_warps_ab.sh     (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
B=${B:-420}
LOG=$OUT/silu_warps_ab.log
echo "card: $card" | tee $LOG
timeout 60 python3 benchmarks/h200-quant/silu_quant_bench.py 2>&1 | tee -a $LOG
fp8_engine $(left 200)
for i in 1 2; do
  unset KILN_SILU_QUANT_WARPS; tp_run w16_$i $PWD /tmp/e-new 0
  export KILN_SILU_QUANT_WARPS=32; tp_run w32_$i $PWD /tmp/e-new 0
done
