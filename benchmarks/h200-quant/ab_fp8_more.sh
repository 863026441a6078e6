#!/usr/bin/env bash
# Follow-up to ab_fp8_throughput.sh on the same warm machine (its engines /tmp/e-old, /tmp/e-new
# and /tmp/old-kiln still there): more alternating runs of #7's fp8 1000 x 128/128, new first,
# each tree from its own directory, then fp8 batch 1 on the new engine. B = seconds of budget.
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
LOG=$OUT/ab_fp8_more.log
echo "card: $card" | tee $LOG
[ -d /tmp/e-old ] && [ -d /tmp/e-new ] && [ -d /tmp/old-kiln ] || { echo "engines gone" | tee -a $LOG; exit 1; }
NEW=$PWD
for P in /tmp/old-kiln $NEW; do
  (cd $P && PYTHONPATH=$P python3 -c "import kiln; print('kiln from', kiln.__file__)") | tee -a $LOG
done
for i in 2 3 4; do
  for T in new old; do
    P=$NEW; [ $T = old ] && P=/tmp/old-kiln
    tp_run ${T}_$i $P /tmp/e-$T 45
  done
done
t=$(left 0); [ $t -gt 40 ] && PYTHONPATH=$NEW timeout $t python3 -m kiln.cli bench latency --model /tmp/e-new \
  --batch-size 1 --input-len 128 --output-len 256 --json $OUT/b1_new.json 2>&1 | tail -4 | tee -a $LOG
