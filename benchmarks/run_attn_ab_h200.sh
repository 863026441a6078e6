#!/usr/bin/env bash
# One device call: the decode-attention launch sweep at large batches (bf16 and fp8 caches), then
# batch-1 decode of this tree against an older one (A/B on one machine; OLD_TREE holds a copy of
# the older tree's kiln package, made with git archive).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
LOG="$OUT/run.log"
M=/tmp/llama-3-8b
[ -d $M ] || PYTHONPATH=$PWD python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda
(cd benchmarks/kernels && PYTHONPATH=$OLDPWD timeout 300 python3 sweep_attention.py --only decode \
  --decode-shapes "${SHAPES:-1000,1,192;1000,1,256;256,1,192}" --kv bf16,fp8 --out "$OUT/sweep_decode_large.json" > "$OUT/sweep.log" 2>&1)
sed -n '/best per shape/,$p' "$OUT/sweep.log" | tee -a "$LOG"
OLD=${OLD_TREE:-.ab/old}
if [ -d "$OLD/kiln" ]; then
  for i in 1 2; do
    for T in old new; do
      P=$PWD; [ $T = old ] && P=$PWD/$OLD
      echo "== b1 $T ($i)" | tee -a "$LOG"
      # from the tree's own directory: python3 -m puts the working directory ahead of PYTHONPATH
      (cd $P && PYTHONPATH=$P timeout 120 python3 -m kiln.cli bench latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/b1_${T}_$i.json" 2>&1 | grep -E "TPOT" | tee -a "$LOG")
    done
  done
fi
