#!/usr/bin/env bash
# Call 3: fp8 8B at 1000 x 128/128 (fp8 cache, 32768-token steps), default against the Gluon
# kernel's own o_proj row quantization (KILN_ATTN_QUANT_OUT=1), alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;qo=KILN_ATTN_QUANT_OUT=1 $F;base2=$F;qo2=KILN_ATTN_QUANT_OUT=1 $F" \
  timeout 540 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['run'], d.get('output_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -5
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
