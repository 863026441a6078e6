#!/usr/bin/env bash
# Prepared in the session of 2026-12-07 (forty-sixth) for the next H200 (at most B = 580 s; on
# another card it stops unless ANY_CARD=1): the bars of #7 and #5 that this session's change
# (RoPE in packed 16-bit FMAs, the fp8 head writing the graphs' logits buffer) may move, on this
# tree and one machine.
# 1. the fp8 8B engine (fp8 LM head, no step tuning, --max-batch-size 1024): #7's 1000 x 128/128
#    three times (tp_run.sh), then batch 1 128/256;
# 2. the bf16 checkpoint: #5's 1000 x 128/128 (bf16 KV cache, the bar's setting), then batch 1.
#   bash benchmarks/h200-quant/bars_h200.sh     (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-580}
LOG=$OUT/bars_h200.log
echo "card: $(nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | head -1)" | tee $LOG
h200_only
fp8_engine $(left 380)
for i in 1 2 3; do tp_run fp8_$i $PWD /tmp/e-new 240; done
lat() {  # lat TAG MODEL [flags]: batch 1, 128 in / 256 out
  local tag=$1 model=$2 t; shift 2
  t=$(left $RES); [ $t -lt 40 ] && { echo "skip b1 $tag ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 90 ? t : 90)) python3 -m kiln.cli bench latency --model $model "$@" --batch-size 1 \
    --input-len 128 --output-len 256 --json $OUT/b1_$tag.json 2>&1 | grep -E "tok/s|TPOT|GB/s" >> $LOG
  echo "b1 $tag at $((SECONDS - T0)) s" | tee -a $LOG
}
RES=170 lat fp8 /tmp/e-new
t=$(left 75)
[ $t -ge 40 ] && timeout $((t < 100 ? t : 100)) python3 -m kiln.cli bench throughput --model $M --dtype bfloat16 \
  --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype auto \
  --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_bf16.json 2>&1 \
  | grep -E "throughput:|GPU during" >> $LOG
echo "bf16 1000 at $((SECONDS - T0)) s" | tee -a $LOG
RES=0 lat bf16 $M --dtype bfloat16
grep -E "output tok/s|decode|at .* s" $LOG
