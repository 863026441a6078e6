#!/usr/bin/env bash
# Follow-up to ab_fp8_throughput.sh on the same warm machine (its engines /tmp/e-old, /tmp/e-new
# and /tmp/old-kiln still there): more alternating runs of #7's fp8 1000 x 128/128, new first,
# each tree from its own directory, then fp8 batch 1 on the new engine. B = seconds of budget.
. benchmarks/device_env.sh
LOG=$OUT/ab_fp8_more.log
echo "card: $card" | tee $LOG
[ -d /tmp/e-old ] && [ -d /tmp/e-new ] && [ -d /tmp/old-kiln ] || { echo "engines gone" | tee -a $LOG; exit 1; }
NEW=$PWD
for P in /tmp/old-kiln $NEW; do
  (cd $P && PYTHONPATH=$P python3 -c "import kiln; print('kiln from', kiln.__file__)") | tee -a $LOG
done
for i in 2 3 4; do
  for T in new old; do
    t=$(left 45); [ $t -lt 50 ] && { echo "skip $T $i ($t s left)" | tee -a $LOG; continue; }
    P=$NEW; [ $T = old ] && P=/tmp/old-kiln
    (cd $P && PYTHONPATH=$P timeout $((t < 110 ? t : 110)) python3 -m kiln.cli bench throughput --model /tmp/e-$T \
      --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype fp8 \
      --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_${T}_$i.json 2>&1 | grep -E "throughput:|GPU during" >> $LOG)
    echo "$T $i at $((SECONDS - T0)) s: $(grep -h 'output tok/s' $LOG | tail -1)" | tee -a $LOG
  done
done
t=$(left 0); [ $t -gt 40 ] && PYTHONPATH=$NEW timeout $t python3 -m kiln.cli bench latency --model /tmp/e-new \
  --batch-size 1 --input-len 128 --output-len 256 --json $OUT/b1_new.json 2>&1 | tail -4 | tee -a $LOG
