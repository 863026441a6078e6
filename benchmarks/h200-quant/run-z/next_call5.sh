#!/usr/bin/env bash
# For the next machine, call 5 (about 300 s; worth it if call 4 shows the flat loop beating
# split-K at some 8B layers): the bf16 8B checkpoint at batch 1 with the stream-K candidates,
# flat ones included, in its start-up autotuning (KILN_TC_STREAM_K=1) against the default,
# alternating on one machine.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=none TP=0 B1=1 VARIANTS="base=;sk=KILN_TC_STREAM_K=1;base2=;sk2=KILN_TC_STREAM_K=1" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
grep -i "error" $OUT/variants.log | head -6
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
