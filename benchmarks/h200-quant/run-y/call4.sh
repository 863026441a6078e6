#!/usr/bin/env bash
# call 4: the bf16 8B checkpoint at 1000 x 128/128 (#5's 20,000 bar) with the prefill
# step sizes the fp8 run gained from (8,192 -> 32,768 tokens: +0.8% there, run-t), alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=none TP=1 B1=0 \
  VARIANTS="t8k=;t32k=--max-num-batched-tokens=32768;t8k2=;t32k2=--max-num-batched-tokens=32768" \
  timeout 330 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['run'], d.get('output_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
tail -3 $OUT/variants.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
