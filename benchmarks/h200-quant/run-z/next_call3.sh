#!/usr/bin/env bash
# For the next machine, call 3 (about 200 s; worth it if call 1's probe shows row-major runs of
# 512-1,024 bytes streaming well above 128-256): the tensor-core GEMV sweep at batch 1, fp8 and
# bf16, with the few-row long-K tiles added (sweep_gemv.py --tc-long-k), to see whether the
# fp8 batch-1 bar's small layers and down_proj gain from longer runs per row.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 560 python3 benchmarks/kernels/sweep_gemv.py --schemes fp8-tc,bf16-tc --tc-long-k \
  --verbose --json $OUT/sweep_tc_long_k.json > $OUT/sweep_tc_long_k.log 2>&1
grep -v "^  " $OUT/sweep_tc_long_k.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
