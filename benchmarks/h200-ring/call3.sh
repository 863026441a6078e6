#!/usr/bin/env bash
# Device call 3 (prepared, not yet run; at most 560 s): does the ring GEMV lose in the engine's
# batch-1 step because its early copies (up to 4 x 16 KB a program, 17 MB a launch, issued
# before it waits) queue ahead of the loads of the small kernels before it (norms, attention,
# SiLU-mul), which are on the step's critical path? bf16 8B batch 1, 128 in / 256 out,
# ab_latency.py, 3 rounds alternating: the tensor-core GEMV, the ring with 4, 2, 1 and 0 early
# copies (KILN_RING_EARLY), and the ring on the LM head only. Then the 129 GEMVs alone, tc_gemv
# against ring_gemv at 4, 2, 1 and 0 early copies, back to back and with an RMSNorm launch after
# each (proto_ring_chain.py --ring-gemv-only --between norm): if the ring loses only with the
# norms in between, the small kernels' interaction is the cause.
#   bash benchmarks/h200-ring/call3.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 380 python3 benchmarks/ab_latency.py --model $M --rounds 3 \
  --variants "tc=KILN_RING_GEMV=0;e4=KILN_RING_GEMV=1 KILN_RING_EARLY=4;e2=KILN_RING_GEMV=1 KILN_RING_EARLY=2;e1=KILN_RING_GEMV=1 KILN_RING_EARLY=1;e0=KILN_RING_GEMV=1 KILN_RING_EARLY=0;head=KILN_RING_GEMV=head" \
  --json $OUT/ab_bf16_early.json > $OUT/ab_bf16_early.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -8 $OUT/ab_bf16_early.log
left=$((555 - SECONDS + T0))
[ $left -gt 40 ] && timeout $left python3 benchmarks/kernels/proto_ring_chain.py --layers 32 \
  --ring-gemv-only --ring-early 4,2,1,0 --between norm --json $OUT/ring_gemv_chain.json 2>&1 | tail -12
