#!/usr/bin/env bash
# Device call 18 (at most B = 400 s), for an H200 only (on another card it stops at once): the
# bars' batch-1 numbers on this tree. 1. the bf16 8B checkpoint, batch 1, 128/256, ab_latency,
# two rounds alternating: tc0 (tensor-core GEMV, KILN_PDL_PREWAIT=0), tc (the default
# checkpoint path), ring (the batch-1 ring path with the small kernels early, what a
# `--quant none` build stores where it wins; ringp1, one program an SM, was dropped after
# call 20 measured it 12% slower on an H100); 2. the fp8 8B engine built, `kiln bench latency`
# batch 1 on it (run_variants_h200.sh), as time allows.
# Short form for the last ~170 s of a session's device time (one round of tc and ring, no fp8):
# SHORT=1 B=160 bash benchmarks/h200-ring/call18.sh
#   bash benchmarks/h200-ring/call18.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-400}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name" | tee -a $OUT/times.log
case $name in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
V="tc=KILN_RING_GEMV=0;ring=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early"
if [ "${SHORT:-0}" = 1 ]; then rounds=1 reserve=3; else rounds=2 reserve=150 V="tc0=KILN_RING_GEMV=0 KILN_PDL_PREWAIT=0;$V"; fi
timeout $((B - reserve - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds $rounds --variants "$V" \
  --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
echo "bf16 ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -4 $OUT/ab_bf16.log
[ "${SHORT:-0}" = 1 ] && exit 0
left=$((B - 5 - SECONDS + T0))
[ $left -lt 120 ] && { echo "no fp8 ($left s left)"; exit 0; }
QUANT=fp8 VARIANTS="tuned=" timeout $left bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -h "build\|chose\|batch1\|decode" $OUT/variants.log | tail -5
