#!/usr/bin/env bash
# Next machine, call B: the int4-wo 8B engine at batch 1 (128 in / 256 out) with the Gluon int4
# GEMV (KILN_INT4_MMA=1) and without, alternating (set default_tile from call A's sweep first);
# then the LM head as fp8 (--lm-head-quant fp8, 391.0 tok/s in run-k) and as int4-wo, with it.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=int4-wo TP=0 B1=1 VARIANTS="base=;mma=KILN_INT4_MMA=1;base2=;mma2=KILN_INT4_MMA=1" \
  timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
for head in fp8 int4-wo; do
  QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-head-$head BUILD_ARGS="--lm-head-quant $head" \
    VARIANTS="head-$head=;head-$head-mma=KILN_INT4_MMA=1" \
    timeout 140 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
done
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
tail -3 $OUT/variants.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
