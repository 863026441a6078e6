#!/usr/bin/env bash
# Device call 23 (prepared in the session of 2026-12-06, forty-first; at most B = 480 s), for an
# H200 (on another card it stops at once unless ANY_CARD=1). 1. bf16 batch 1, 128/256, through
# `kiln bench latency` (the bar's own command): the checkpoint against a `kiln build --quant none`
# engine of it (the build's per-kernel and decode-step tuning; never run on an H200),
# alternating, two runs each, then the checkpoint once more with --no-gpu-clocks (the bench's
# nvidia-smi sampling against none); 2. #5's other bars by the CLI on the checkpoint: TTFT of
# one 2048-token prompt, 1000 x 128/128 at 1024 sequences and 32,768-token steps.
# LEAN=1 BUILD_RESERVE=95 (the last ~350 s of device time): the build, then one run of each, built first.
#   bash benchmarks/h200-ring/call23.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-480}
LOG=$OUT/call23.log
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name" | tee -a $LOG
case $name in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
git log --oneline -1 >> $LOG 2>/dev/null
M=/tmp/llama-3-8b
E=/tmp/e8b-none-built
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
echo "model ready at $((SECONDS - T0)) s" | tee -a $LOG
K="python3 -m kiln.cli bench"
left() { echo $((B - $1 - SECONDS + T0)); }
lat() {  # lat MODEL NAME: batch 1, 128/256
  local t; t=$(left 10); [ $t -lt 40 ] && { echo "skip $2 ($t s left)" | tee -a $LOG; return; }
  echo "== $2" >> $LOG
  timeout $t $K latency --model $1 --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 \
    --num-iters-warmup 1 --no-progress --json $OUT/$2.json 2>&1 | grep -v Warning | tail -4 >> $LOG
  echo "$2 done at $((SECONDS - T0)) s: $(grep -h 'decode' $LOG | tail -1)"
}
[ "${LEAN:-0}" = 1 ] || lat $M ckpt_1
T1=$SECONDS
timeout $(left ${BUILD_RESERVE:-150}) python3 -m kiln.cli build $M --output $E --quant none --eval-tokens 256 \
  --max-batch-size 1024 --overwrite --no-progress 2>&1 | grep -v Warning | tail -8 >> $LOG
echo "build --quant none rc $? wall $((SECONDS - T1)) s, at $((SECONDS - T0)) s" | tee -a $LOG
[ -f $E/engine.json ] && lat $E built_1
lat $M ckpt_2
[ -f $E/engine.json ] && [ "${LEAN:-0}" != 1 ] && lat $E built_2
[ "${LEAN:-0}" = 1 ] && { grep -h "decode\|startup\|built\|step" $LOG | tail -12; exit 0; }
# the bench's nvidia-smi sampling (new, never run on a GPU) against none, on the checkpoint
t=$(left 110); [ $t -gt 40 ] && timeout $t $K latency --model $M --batch-size 1 --input-len 128 \
  --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --no-gpu-clocks \
  --json $OUT/ckpt_noclk.json 2>&1 | grep -v Warning | tail -4 >> $LOG
t=$(left 60)
[ $t -gt 30 ] && timeout $t $K latency --model $M --batch-size 1 --input-len 2048 --output-len 1 \
  --max-num-batched-tokens 4096 --num-iters 5 --no-progress --json $OUT/ttft_2048.json 2>&1 | tail -3 >> $LOG
echo "ttft at $((SECONDS - T0)) s" | tee -a $LOG
t=$(left 5)
[ $t -gt 40 ] && timeout $t $K throughput --model $M --num-prompts 1000 --input-len 128 --output-len 128 \
  --max-num-seqs 1024 --max-num-batched-tokens 32768 --no-progress --json $OUT/throughput_1000.json 2>&1 | tail -3 >> $LOG
echo "throughput at $((SECONDS - T0)) s" | tee -a $LOG
grep -h "decode\|TTFT\|output tok\|startup\|built\|step" $LOG | tail -24
