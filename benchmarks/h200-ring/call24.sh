#!/usr/bin/env bash
# Device call 24 (session of 2026-12-06, forty-second): call23 on an H200; on any other card a
# short check of the bench's nvidia-smi sampling (never run on a GPU before): batch 1 on the 8B
# checkpoint with and without it, and a 200-request throughput run with it.
#   bash benchmarks/h200-ring/call24.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case $name in *H200*) exec bash benchmarks/h200-ring/call23.sh ;; esac
LOG=$OUT/call24.log
echo "card: $name (not an H200: the sampler check only)" | tee -a $LOG
git log --oneline -1 >> $LOG 2>/dev/null
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
K="python3 -m kiln.cli bench"
for v in clk noclk; do
  f=""; [ $v = noclk ] && f=--no-gpu-clocks
  timeout 100 $K latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 \
    --num-iters-warmup 1 --no-progress $f --json $OUT/h100_lat_$v.json 2>&1 | grep -v Warning | tail -5 >> $LOG
done
timeout 120 $K throughput --model $M --num-prompts 200 --input-len 128 --output-len 128 \
  --no-progress --json $OUT/h100_tp200.json 2>&1 | grep -v Warning | tail -4 >> $LOG
cat $LOG
