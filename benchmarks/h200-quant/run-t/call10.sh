#!/usr/bin/env bash
# Session of 2026-12-04 (fifteenth), call 10: the fp8 8B engine (fp8 head, fp8 KV cache) at
# 1000 x 128/128 with larger prefill steps: --max-num-batched-tokens 8192 (the runs so far),
# 16384 and 32768 (the last flag given wins).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="mbt8k=--kv-cache-dtype=fp8;mbt16k=--kv-cache-dtype=fp8 --max-num-batched-tokens=16384;mbt32k=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout 450 bash benchmarks/run_variants_h200.sh
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
