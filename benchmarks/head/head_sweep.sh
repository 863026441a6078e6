#!/usr/bin/env bash
# The 8B LM head (128256 x 4096) at batch 1 in every weight format the engine can store it in:
# int4 weight-only (rows in blocks of 16, the engine's default, and row-major), int8
# weight-only (added after the first run), the tensor-core
# int4 kernel, the fp8 and bf16 tensor-core GEMVs, and cuBLAS bf16 (bf16-tc's baseline). Each
# config is checked against its reference before it is timed (sweep_gemv.py).
#   bash benchmarks/head/head_sweep.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
export PYTHONPATH=$PWD
LOG=$OUT/head_sweep.log
echo "card: $card" | tee -a $LOG
S=benchmarks/kernels/sweep_gemv.py
python3 $S --schemes int4 --shapes lm_head --int4-row-block 16 --json $OUT/head_int4_rb16.json 2>&1 | tail -3 | tee -a $LOG
python3 $S --schemes int4 --shapes lm_head --json $OUT/head_int4.json 2>&1 | tail -3 | tee -a $LOG
python3 $S --schemes int8 --shapes lm_head --json $OUT/head_int8.json 2>&1 | tail -3 | tee -a $LOG
python3 $S --schemes fp8-tc,bf16-tc,int4-tc --shapes lm_head --json $OUT/head_tc.json 2>&1 | tail -6 | tee -a $LOG
echo "head sweep at $((SECONDS - T0)) s" | tee -a $LOG
