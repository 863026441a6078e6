#!/usr/bin/env bash
# Device call 3 (ran in run-b on an H200 at tree 2c60458; since then --ring-order and
# KILN_RING_ORDER are gone, so as written it no longer runs; at most 340 s; then call4.sh at once, on the same warm
# machine). Why does the ring GEMV, faster than the tensor-core GEMV over the 8B's 129 GEMVs
# back to back, lose in the engine's batch-1 step? Suspect: its early copies (up to 4 x 16 KB a
# program, 17 MB a launch, issued before it waits) queue ahead of the dependent loads of the
# small kernels before it (norms, attention, SiLU-mul), which are on the step's critical path.
# And does folding the norms and SiLU-mul into the ring GEMVs' x remove that cost?
# 1. tests/gpu/test_ring_gemv_gpu.py (the prologues and KILN_RING_ORDER are new: not yet run);
# 2. proto_ring_chain.py --ring-gemv-only: the 129 GEMVs, tc_gemv against ring_gemv at 4, 1 and
#    0 early copies (KILN_RING_EARLY) and both walk orders (KILN_RING_ORDER), back to back, with
#    an RMSNorm after each, and as a decode step's GEMVs with its small kernels between them or
#    folded in (--step); the 8B checkpoint is made meanwhile for call4.sh.
#   bash benchmarks/h200-ring/call3.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 170 python3 -m pytest -v -n 4 -p no:cacheprovider tests/gpu/test_ring_gemv_gpu.py > $OUT/gpu_tests.log 2>&1
echo "ring GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -20
tail -1 $OUT/gpu_tests.log
timeout 150 python3 benchmarks/kernels/proto_ring_chain.py --layers 32 --ring-gemv-only \
  --ring-order 0,1 --ring-early 4,1,0 --between norm --step --json $OUT/ring_gemv_chain.json > $OUT/ring_gemv_chain.log 2>&1
echo "chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/ring_gemv_chain.log | tail -16
wait
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
