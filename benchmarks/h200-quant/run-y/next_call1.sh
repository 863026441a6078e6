#!/usr/bin/env bash
# For the next machine: the GPU tests this session changed without a GPU (the weight-only LM head
# engine test now runs the FMA GEMV; the quant-out engine test's Gluon assertion), then the
# int4-wo 8B engine at batch 1 with its LM head in bfloat16 and in int4-wo, on one machine,
# alternating (run-y measured 386.2 and 401.9 on two machines).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 200 python3 -m pytest -q -n 3 tests/gpu/test_quant_gpu.py tests/gpu/test_engine_gpu.py \
  -k "weight_only_lm_head or quant_out" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=int4-wo TP=0 B1=1 VARIANTS="bf16-head=" timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-head-int4 BUILD_ARGS="--lm-head-quant int4-wo" VARIANTS="int4-head=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
[ $((SECONDS - T0)) -lt 520 ] && QUANT=int4-wo TP=0 B1=1 VARIANTS="bf16-head2=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -6
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
