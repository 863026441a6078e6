#!/usr/bin/env bash
# Session of 2026-12-04 (seventeenth), call 4, on the tree where single-partition decode launches
# over an fp8 cache can quantize o_proj's input themselves (KILN_ATTN_QUANT_OUT=1):
# 1. GPU tests of the attention's quantized output, the fp8 cache and the engine;
# 2. fp8 8B engine, 1000 x 128/128 at 32768-token steps, KILN_ATTN_QUANT_OUT 1 / 0 alternating,
#    then batch 1 (128/256) with each.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 8 tests/gpu/test_kernels_gpu.py tests/gpu/test_fp8_kv_gpu.py \
  tests/gpu/test_engine_gpu.py -k "quantiz or producer or fp8 or fresh or decode" > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="qo1=KILN_ATTN_QUANT_OUT=1 $F;qo0=KILN_ATTN_QUANT_OUT=0 $F;qo1b=KILN_ATTN_QUANT_OUT=1 $F;qo0b=KILN_ATTN_QUANT_OUT=0 $F" \
  timeout 330 bash benchmarks/run_variants_h200.sh
echo "tp done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=0 B1=1 BUILD_TAG=-head \
  VARIANTS="b1qo1=KILN_ATTN_QUANT_OUT=1;b1qo0=KILN_ATTN_QUANT_OUT=0" \
  timeout $((570 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
