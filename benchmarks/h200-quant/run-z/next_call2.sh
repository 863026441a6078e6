#!/usr/bin/env bash
# For the next machine, call 2 (right after call 1; worth it only if call 1's sweep shows the
# blocks faster): the int4-wo 8B engine at batch 1, row-major against KILN_INT4_ROW_BLOCK=16
# (the layers tile their weights at load), alternating on one engine whose kernel tuning was
# made on row-major weights; then, if time is left, an engine built (and so tuned) with the
# blocks.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=int4-wo TP=0 B1=1 \
  VARIANTS="base=;rb16=KILN_INT4_ROW_BLOCK=16;base2=;rb16b=KILN_INT4_ROW_BLOCK=16" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "first engine done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
[ $((SECONDS - T0)) -lt 390 ] && QUANT=int4-wo TP=0 B1=1 BUILD_TAG=-rb16 \
  BUILD_ENV="KILN_INT4_ROW_BLOCK=16" VARIANTS="rb16-built=KILN_INT4_ROW_BLOCK=16" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "build\|error" $OUT/variants.log | head -6
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
