#!/usr/bin/env bash
# Session of 2026-12-04 (sixteenth), call 1:
# (The e4m3 swap variants of that time; SWAP_VARIANTS has changed since: see the README, run-u.)
# 1. decode attention prototypes with the keys as the wide operand (e4m3 keys straight into wgmma,
#    q split hi + lo) at 1000 x 192 / 128 / 256, beside the engine's kernel;
# 2. the fp8 8B engine (fp8 head, fp8 KV) at 1000 x 128/128, --max-num-batched-tokens 32768, with
#    and without the last layer computing only the sampled rows (KILN_LAST_LAYER_ROWS);
# 3. the engine GPU tests.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
(cd benchmarks/kernels && timeout 200 python3 proto_fp8_decode.py --prototype-only --swap-only \
  --json $OUT/proto_swap.json > $OUT/proto_swap.log 2>&1)
echo "proto done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="rows=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768;allrows=KILN_LAST_LAYER_ROWS=0 --kv-cache-dtype=fp8 --max-num-batched-tokens=32768;rows2=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout 330 bash benchmarks/run_variants_h200.sh
echo "engine done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((580 - SECONDS + T0)) python3 -m pytest -q -n 8 tests/gpu/test_engine_gpu.py > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
