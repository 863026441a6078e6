#!/usr/bin/env bash
# Call 2: the Gluon decode kernel's own o_proj row quantization (KILN_ATTN_QUANT_OUT=1) GPU tests;
# then the int4-wo 8B engine: kernel profiles of batch-1 decode with the FMA GEMV and with the
# Gluon mma GEMV (KILN_INT4_MMA=1, 304 vs 386 tok/s in call 1); then weight-only LM heads
# (--lm-head-quant int4-wo / fp8) at batch 1.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 3 tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_engine_gpu.py \
  -k "quant_out or quantizes_its_output" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=int4-wo TP=0 B1=1 VARIANTS="base=" timeout 200 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
P="python3 benchmarks/profile/profile_engine.py --model /tmp/e8b-int4-wo --num-prompts 1 --max-num-seqs 1 --output-len 160 --skip-steps 20 --steps 128 --top 14"
for v in "base=" "mma=KILN_INT4_MMA=1"; do
  env ${v#*=} timeout 70 $P --label ${v%%=*} > $OUT/prof_${v%%=*}.txt 2>&1
  grep -E "ms/step|wall|quant|gemv|mma" $OUT/prof_${v%%=*}.txt | head -8
done
echo "profiles done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for head in int4-wo fp8; do
  [ $((SECONDS - T0)) -gt 470 ] && break
  QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-head-$head BUILD_ARGS="--lm-head-quant $head" VARIANTS="head-$head=" \
    timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
done
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -6
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
