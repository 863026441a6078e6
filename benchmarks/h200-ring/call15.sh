#!/usr/bin/env bash
# Device call 15 (at most B = 540 s), after call 14 on the same warm H200 (/tmp/llama-3-8b
# reused). The batch-1 ring path has never run on an H200 with the small kernels triggering
# early (its -8.8% there, run-b, was with the default trigger). bf16 8B checkpoint, batch 1,
# 128/256, ab_latency, 2 rounds alternating, a per-kernel profile of 24 tokens each:
# tc (tensor-core GEMV), e4S (the ring path as batch1_ring_scope sets it), fusedS (norms and
# SiLU-mul in the ring GEMVs), layS (the ring on the layers, cuBLAS head), tcS.
#   bash benchmarks/h200-ring/call15.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-540}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 10 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "${AB_VARIANTS:-tc=KILN_RING_GEMV=0;e4S=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early;fusedS=KILN_RING_GEMV=fused KILN_PDL_TRIGGER=early;layS=KILN_RING_GEMV=layers KILN_PDL_TRIGGER=early;tcS=KILN_RING_GEMV=0 KILN_PDL_TRIGGER=early}" \
  --json $OUT/ab_bf16_h200.json > $OUT/ab_bf16_h200.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_bf16_h200.log | grep -A8 "kernel span\|^variant" | tail -60
