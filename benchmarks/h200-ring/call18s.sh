#!/usr/bin/env bash
# Device call 18, short form (prepared in the session of 2026-12-06, fortieth, for the last
# ~170 s of a session's device time), H200 only (on another card it stops at once): the bf16 8B
# checkpoint at batch 1, 128/256, one round of ab_latency: tc (the default checkpoint path) and
# ring (the batch-1 ring path with the small kernels early).
#   bash benchmarks/h200-ring/call18s.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-160}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name" | tee -a $OUT/times.log
case $name in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 3 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 1 \
  --variants "tc=KILN_RING_GEMV=0;ring=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early" \
  --json $OUT/ab_bf16_short.json > $OUT/ab_bf16_short.log 2>&1
echo "bf16 ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep "^round\|^tc \|^ring " $OUT/ab_bf16_short.log
