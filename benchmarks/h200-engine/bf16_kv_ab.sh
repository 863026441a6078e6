#!/usr/bin/env bash
# Prepared in the session of 2026-12-07 (forty-fourth), any card (at most B = 200 s): #5's
# 1000 x 128/128 workload on the bf16 8B checkpoint with its KV cache in bf16 (the bar's setting)
# and in fp8 (scale 1.0: no engine calibration), alternating on one machine. Decode attention
# reads about 25 GB of keys and values a step at 1000 sequences; an fp8 cache halves that.
#   bash benchmarks/h200-engine/bf16_kv_ab.sh     (OUT set by the device tool)
. benchmarks/device_env.sh
export PYTHONPATH=$PWD
B=${B:-200}
LOG=$OUT/bf16_kv_ab.log
echo "card: $(nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | head -1)" | tee -a $LOG
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
echo "model ready at $((SECONDS - T0)) s" | tee -a $LOG
for i in 1 2; do
  for KV in auto fp8; do
    t=$(left 2); [ $t -lt 30 ] && { echo "skip $KV $i ($t s left)" | tee -a $LOG; continue; }
    timeout $((t < 90 ? t : 90)) python3 -m kiln.cli bench throughput --model $M --dtype bfloat16 \
      --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype $KV \
      --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_kv_${KV}_$i.json 2>&1 \
      | grep -E "throughput:|GPU during|startup" >> $LOG
    echo "kv $KV $i at $((SECONDS - T0)) s: $(grep -h 'output tok/s' $LOG | tail -1)" | tee -a $LOG
  done
done
tail -14 $LOG
