#!/usr/bin/env bash
# Session of 2026-12-04 (sixteenth), call 5, on the tree with keys-wide decode scores by default:
# 1. pytest tests/gpu -n 8;
# 2. fp8 8B engine (fp8 head, fp8 KV), 1000 x 128/128 at --max-num-batched-tokens 32768: default
#    twice, KILN_ATTN_KEYS_WIDE=0 once;
# 3. bf16 8B checkpoint, 1000 x 128/128 (default).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 190 python3 -m pytest -q -n 8 tests/gpu > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="kw=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768;qk=KILN_ATTN_KEYS_WIDE=0 --kv-cache-dtype=fp8 --max-num-batched-tokens=32768;kw2=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout 200 bash benchmarks/run_variants_h200.sh
echo "fp8 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=none TP=1 B1=0 VARIANTS="kw=" timeout $((405 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
