#!/usr/bin/env bash
# For the next machine, call 8 (about 550 s; worth it if call 7's sweep shows a capped candidate
# faster at some 8B layer): the int4-wo 8B engine built with the register-capped candidates in
# its kernel tuning (KILN_GEMV_MAXNREG=1, at build and at run) against the default build, batch
# 1, alternating. Both builds skip the decode-step tuning to fit one call.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-nostep BUILD_ARGS="--step-tuning-batch-sizes none" \
  VARIANTS="base=" timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-mr BUILD_ARGS="--step-tuning-batch-sizes none" \
  BUILD_ENV="KILN_GEMV_MAXNREG=1" VARIANTS="mr=KILN_GEMV_MAXNREG=1" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
[ $((SECONDS - T0)) -lt 520 ] && QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-nostep VARIANTS="base2=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
[ $((SECONDS - T0)) -lt 550 ] && QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-mr VARIANTS="mr2=KILN_GEMV_MAXNREG=1" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -6
grep -o '"maxnreg": [0-9]*' /tmp/e8b-int4-wo-mr/engine.json | sort | uniq -c
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
