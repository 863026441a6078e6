#!/usr/bin/env bash
# Device call 4 (ran in run-b on an H200 at tree 2c60458; KILN_PDL_TRIGGER=exit and
# KILN_RING_ORDER have since been removed, so tcx, e4x, fusedx and fusedo now run as tc, e4,
# fused and fused; at most 480 s; right after call3.sh, whose machine holds
# the 8B checkpoint at /tmp/llama-3-8b, made again here if missing): bf16 8B batch 1,
# 128 in / 256 out, ab_latency.py, 2 rounds alternating, each variant's last round followed by a
# profiled generation of 24 tokens (every kernel's increment of a step's span, by name):
#   tc      the tensor-core GEMV (default)         tcx     the same, small kernels trigger at exit
#   e4, e1  the ring, 4 or 1 copies before its wait e4x     the ring, small kernels trigger at exit
#   fused   norms and SiLU-mul in the ring GEMVs   fused1  the same, 1 early copy
#   fusedx  fused, small kernels trigger at exit   fusedo  fused, shared tiles walked first
#   head    the ring on the LM head only
#   bash benchmarks/h200-ring/call4.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
timeout $((470 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "tc=KILN_RING_GEMV=0;tcx=KILN_RING_GEMV=0 KILN_PDL_TRIGGER=exit;e4=KILN_RING_GEMV=1 KILN_RING_EARLY=4;e1=KILN_RING_GEMV=1 KILN_RING_EARLY=1;e4x=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=exit;fused=KILN_RING_GEMV=fused;fused1=KILN_RING_GEMV=fused KILN_RING_EARLY=1;fusedx=KILN_RING_GEMV=fused KILN_PDL_TRIGGER=exit;fusedo=KILN_RING_GEMV=fused KILN_RING_ORDER=1;head=KILN_RING_GEMV=head" \
  --json $OUT/ab_bf16_early.json > $OUT/ab_bf16_early.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_bf16_early.log | tail -130
