#!/usr/bin/env bash
# Session of 2026-12-04 (fifteenth), call 4: the fp8 8B engine (fp8 head, fp8 KV cache, fast
# accumulation) at 1000 x 128/128 with decode attention reading values late (the new default for
# the large tile) against KILN_ATTN_LATE_V=0; then the new GPU test.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="late=--kv-cache-dtype=fp8;beside=KILN_ATTN_LATE_V=0 --kv-cache-dtype=fp8;late2=--kv-cache-dtype=fp8" \
  timeout 470 bash benchmarks/run_variants_h200.sh
echo "fp8 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((570 - (SECONDS - T0))) python3 -m pytest -q tests/gpu/test_fp8_kv_gpu.py -k "late_or_beside" \
  > $OUT/tests.log 2>&1; tail -2 $OUT/tests.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
