#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 4: the tree with the transposed Gluon kernel as the
# default: GPU tests (the fp8 cache file, the engine tests of the Gluon kernel and of the
# attention's row quantization, the decode kernel tests), then the fp8 8B engine at
# 1000 x 128/128 (default twice, KILN_ATTN_GLUON=0 once) and at batch 1 over an fp8 cache (the
# same engine; batch 1 takes the Triton split kernel).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 220 python3 -m pytest -q -n 8 tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_engine_gpu.py \
  tests/gpu/test_kernels_gpu.py -k "fp8 or gluon or quant_out or decode" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;triton=KILN_ATTN_GLUON=0 $F;base2=$F" \
  timeout $((500 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
QUANT=fp8 TP=0 B1=1 BUILD_TAG=-head VARIANTS="b1=--kv-cache-dtype=fp8" timeout $((590 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['run'], d.get('output_tokens_per_s') or d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
