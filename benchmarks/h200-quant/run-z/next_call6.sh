#!/usr/bin/env bash
# For the next machine, call 6 (about 500 s, on the machine of call 5 so that the 8B checkpoint
# is there): the fp8 8B engine built (and so tuned, per kernel and per decode step) with the
# stream-K candidates, flat ones included (KILN_TC_STREAM_K=1), against the default build, at
# batch 1, alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=fp8 TP=0 B1=1 VARIANTS="base=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
QUANT=fp8 TP=0 B1=1 BUILD_TAG=-sk BUILD_ENV="KILN_TC_STREAM_K=1" VARIANTS="sk=KILN_TC_STREAM_K=1" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
[ $((SECONDS - T0)) -lt 500 ] && QUANT=fp8 TP=0 B1=1 VARIANTS="base2=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
[ $((SECONDS - T0)) -lt 540 ] && QUANT=fp8 TP=0 B1=1 BUILD_TAG=-sk VARIANTS="sk2=KILN_TC_STREAM_K=1" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -6
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
