#!/usr/bin/env bash
# Device call: the GEMV launch-settings sweep (int4 / fp8 / bf16 at batch 1) and cuBLAS against
# TunableOp for the bf16 GEMMs; results to $OUT/sweep_gemv.json, $OUT/gemm_tunable.{json,csv}.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout ${SWEEP_TIMEOUT:-200} python3 benchmarks/kernels/sweep_gemv.py --json "$OUT/sweep_gemv.json" \
  --schemes ${SWEEP_SCHEMES:-int4,fp8,bf16} 2>&1 | grep -v Warning | tee -a "$OUT/run.log"
if [ "${SKIP_TUNABLE:-0}" != 1 ]; then
  timeout ${TUNABLE_TIMEOUT:-150} python3 benchmarks/kernels/bench_gemm_tunable.py --json "$OUT/gemm_tunable.json" \
    --csv "$OUT/gemm_tunable.csv" 2>&1 | grep -v Warning | tee -a "$OUT/run.log"
fi
