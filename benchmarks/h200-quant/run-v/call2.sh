#!/usr/bin/env bash
# Session of 2026-12-04 (seventeenth), call 2, on the tree with fresh fp8 prompts reading the
# codes beside the cache and single-partition decode launches starting at key 0:
# 1. GPU tests of the fp8 cache and the kernels;
# 2. prefill attention of fresh prompts over an fp8 cache: paged kernel against the codes;
# 3. the engine's decode kernel at 1000 sequences (spread 129..256 and fixed contexts);
# 4. fp8 8B engine, 1000 x 128/128 at 32768-token steps: default, KILN_FRESH_FP8=0, default.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 170 python3 -m pytest -q -n 8 tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
(cd benchmarks/kernels && timeout 80 python3 bench_prefill_fresh.py --fp8 --json $OUT/prefill_fp8.json > $OUT/prefill_fp8.log 2>&1)
(cd benchmarks/kernels && timeout 60 python3 proto_decode_pipe.py --engine-only --json $OUT/pipe_engine.json > $OUT/pipe_engine.log 2>&1)
echo "kernels done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="new=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768;paged=KILN_FRESH_FP8=0 --kv-cache-dtype=fp8 --max-num-batched-tokens=32768;new2=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
