#!/usr/bin/env bash
# kiln's CPU engine against Hugging Face generate, two kiln trees alternating on this machine:
# `kiln bench throughput --num-prompts 32 --input-len 64 --output-len 64 --baseline hf` on the demo
# model, ROUNDS rounds (default 3), each tree's run in its own process from its own checkout.
#   bash benchmarks/cpu/ab_throughput.sh OLD_TREE_DIR NEW_TREE_DIR OUT_DIR
old=$1 new=$2 out=$3
mkdir -p $out
for r in $(seq 1 ${ROUNDS:-3}); do
  for tag in old new; do
    dir=$([ $tag = old ] && echo $old || echo $new)
    (cd $dir && PYTHONPATH=$dir python3 -m kiln.cli bench throughput --num-prompts 32 --input-len 64 \
      --output-len 64 --baseline hf --no-progress --json $out/${tag}_$r.json 2>&1 | grep -E "throughput:|baseline")
  done
done
