#!/usr/bin/env bash
# Device call 12 (at most B = 440 s): the int4 ring GEMV on large layers only
# (ring_int4_worth: 40 MB of nibbles or more: the 8B's gate_up and an int4 LM head). The int4-wo
# 8B engine (bf16 LM head, the default) built, batch 1 128/256 with KILN_RING_INT4=0 against =1
# (ab_latency.py, one process, alternating); then, as time allows, the same for an engine with
# an int4 LM head (--lm-head-quant int4-wo).
#   bash benchmarks/h200-ring/call12.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-440}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for TAG in "" -head4; do
  left=$((B - SECONDS + T0)); [ $left -lt 170 ] && { echo "no $TAG run ($left s left)"; break; }
  ARGS=""; [ -n "$TAG" ] && ARGS="--lm-head-quant int4-wo"
  E=/tmp/e8b-int4-wo$TAG
  timeout $((left - 40)) python3 -m kiln.cli build $M --output $E --quant int4-wo --eval-tokens 0 \
    --calib-samples 32 --max-batch-size 1024 --overwrite --no-progress $ARGS > $OUT/build_int4$TAG.log 2>&1
  echo "build$TAG rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -4 $OUT/build_int4$TAG.log
  timeout $((B - 5 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $E \
    --variants "off=KILN_RING_INT4=0;on=KILN_RING_INT4=1" --rounds 2 --json $OUT/ab_ring_int4$TAG.json \
    > $OUT/ab_ring_int4$TAG.log 2>&1
  echo "ab_latency$TAG rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -3 $OUT/ab_ring_int4$TAG.log
done
