#!/usr/bin/env bash
# Device call 2 (session of 2026-12-06, forty-second; at most B = 420 s): #7's throughput bar at
# this tree with the engine's packed kernels. The fp8 8B engine as the bar was measured
# (`--lm-head-quant fp8 --step-tuning-batch-sizes none --max-batch-size 1024`), then
# `kiln bench throughput` 1000 x 128/128 at 1024 sequences, 32,768-token steps and an fp8 KV
# cache: twice on an empty Triton cache each (start-up with the pack; kernels compiled during
# start-up beyond it are the ones the pack's default start-up did not meet), then once more on
# the second, now warm, cache.
#   bash benchmarks/kernel-pack/call2.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-420}
LOG=$OUT/call2.log
left() { echo $((B - $1 - SECONDS + T0)); }
card=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
echo "card: $card" | tee -a $LOG
case $card in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
git log --oneline -1 >> $LOG 2>/dev/null
M=/tmp/llama-3-8b
E=/tmp/e8b-fp8-h8-1024
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
echo "model ready at $((SECONDS - T0)) s" | tee -a $LOG
T1=$SECONDS
timeout $(left 170) python3 -m kiln.cli build $M --output $E --quant fp8 --lm-head-quant fp8 \
  --step-tuning-batch-sizes none --max-batch-size 1024 --eval-tokens 256 --overwrite --no-progress \
  2>&1 | grep -v Warning | tail -6 >> $LOG
echo "build rc $? wall $((SECONDS - T1)) s, at $((SECONDS - T0)) s" | tee -a $LOG
cp $E/engine.json $OUT/engine_fp8_h8_1024.json 2>/dev/null
C2=$(mktemp -d /tmp/tc-b-XXXX)
tp() {  # tp NAME CACHE_DIR
  local t; t=$(left 5); [ $t -lt 45 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  local before; before=$(ls $2 | wc -l)
  echo "== $1" >> $LOG
  TRITON_CACHE_DIR=$2 timeout $((t < 120 ? t : 120)) python3 -m kiln.cli bench throughput --model $E \
    --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype fp8 \
    --max-num-batched-tokens 32768 --no-progress --json $OUT/$1.json 2>&1 | grep -v Warning | tail -3 >> $LOG
  python3 -c "import json; d=json.load(open('$OUT/$1.json')); print('startup %.1f s, packed %s' % (d['startup_seconds'], d['engine'].get('packed_kernels')))" >> $LOG 2>&1
  echo "$1 at $((SECONDS - T0)) s: cache entries $before -> $(ls $2 | wc -l); $(grep -h 'output tok/s' $LOG | tail -1)" | tee -a $LOG
}
tp fresh_a $(mktemp -d /tmp/tc-a-XXXX)
tp fresh_b $C2
tp warm_b $C2
tail -20 $LOG
