#!/usr/bin/env bash
# Session of 2026-12-04 (seventeenth), call 5, on the tree where the last layer's sampled rows of
# in-kernel quantized attention output are re-padded to 16-row multiples (cuBLAS):
# 1. GPU tests of the attention's quantized output (large batches over an fp8 cache included);
# 2. fp8 8B engine, 1000 x 128/128 at 32768-token steps, KILN_ATTN_QUANT_OUT 1 and 0.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 100 python3 -m pytest -q -n 8 tests/gpu/test_kernels_gpu.py tests/gpu/test_engine_gpu.py \
  -k "quant" > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="qo1=KILN_ATTN_QUANT_OUT=1 $F;qo0=KILN_ATTN_QUANT_OUT=0 $F" \
  timeout $((280 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
