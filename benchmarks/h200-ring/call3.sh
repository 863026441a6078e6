#!/usr/bin/env bash
# Device call 3 (prepared, not yet run; at most 560 s). Why does the ring GEMV, faster than the
# tensor-core GEMV over the 8B's 129 GEMVs back to back, lose in the engine's batch-1 step?
# Suspect: its early copies (up to 4 x 16 KB a program, 17 MB a launch, issued before it waits)
# queue ahead of the dependent loads of the small kernels before it (norms, attention,
# SiLU-mul), which are on the step's critical path. And does folding the norms and SiLU-mul
# into the ring GEMVs' x (ring_gemv_norm, ring_gemv_silu) remove that cost?
# 1. tests/gpu/test_ring_gemv_gpu.py (the fused prologues are new: not yet run anywhere);
# 2. proto_ring_chain.py --ring-gemv-only: the 129 GEMVs, tc_gemv against ring_gemv at 4, 1
#    and 0 early copies (KILN_RING_EARLY), back to back, with an RMSNorm after each, and as a
#    decode step's GEMVs with its small kernels between them or fused (--step);
# 3. bf16 8B batch 1, 128 in / 256 out, ab_latency.py, 2 rounds alternating: tensor-core GEMV,
#    the ring at 4, 1 and 0 early copies, the fused layer (KILN_RING_GEMV=fused) at 4 and 1,
#    the ring on the LM head only; and with the small kernels triggering their dependents at
#    exit (KILN_PDL_TRIGGER=exit: the GEMV after one launches, and copies, only then) for the
#    tensor-core GEMV, the ring and the fused layer; and the fused layer with shared tiles'
#    units walked first (KILN_RING_ORDER=1: their partial sums are added early, not at the end); each variant's last round is followed by a profiled
#    generation of 24 tokens: every kernel's increment of the step's span (ab_latency.py
#    --profile-tokens), so that the kernels that grow with the ring show by name.
#   bash benchmarks/h200-ring/call3.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 150 python3 -m pytest -v -n 4 -p no:cacheprovider tests/gpu/test_ring_gemv_gpu.py > $OUT/gpu_tests.log 2>&1
echo "ring GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -20
tail -1 $OUT/gpu_tests.log
timeout 150 python3 benchmarks/kernels/proto_ring_chain.py --layers 32 --ring-gemv-only \
  --ring-order 0,1 --ring-early 4,1,0 --between norm --step --json $OUT/ring_gemv_chain.json > $OUT/ring_gemv_chain.log 2>&1
echo "chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/ring_gemv_chain.log | tail -16
wait
timeout $((555 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "tc=KILN_RING_GEMV=0;tcx=KILN_RING_GEMV=0 KILN_PDL_TRIGGER=exit;e4=KILN_RING_GEMV=1 KILN_RING_EARLY=4;e1=KILN_RING_GEMV=1 KILN_RING_EARLY=1;e0=KILN_RING_GEMV=1 KILN_RING_EARLY=0;e4x=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=exit;fused=KILN_RING_GEMV=fused;fused1=KILN_RING_GEMV=fused KILN_RING_EARLY=1;fusedx=KILN_RING_GEMV=fused KILN_PDL_TRIGGER=exit;fusedo=KILN_RING_GEMV=fused KILN_RING_ORDER=1;head=KILN_RING_GEMV=head" \
  --json $OUT/ab_bf16_early.json > $OUT/ab_bf16_early.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_bf16_early.log | tail -130
