#!/usr/bin/env bash
# Device call 6 (prepared, not yet run; at most 520 s). Calls 3 and 4 (H200) found the ring GEMV
# fast back to back (3.934 ms for the 8B's 129 GEMVs, 91% of copy) but slow with a kernel
# between (4.536 ms with an RMSNorm after each) and in the engine (-8.8%). Under the default PDL
# trigger a small kernel lets its successor launch only after its own wait, i.e. once the GEMV
# before it has ended, so the next ring GEMV's early copies overlap only the small kernel; back
# to back, a ring GEMV triggers right after its own wait and the next one is launched while it
# still runs. KILN_PDL_TRIGGER=early makes the small kernels trigger before they wait (PDL 2),
# KILN_PDL_EARLY=1 every kernel. 1. the chain prototype with the small kernels early; 2. the
# engine (bf16 8B, batch 1, 128/256, ab_latency, 2 rounds alternating); 3. the ring GPU tests
# with the small kernels early (the engine's greedy tokens with `fused` among them).
#   bash benchmarks/h200-ring/call6.sh     (OUT set by the device tool)
# AB_VARIANTS overrides the engine variants; B (default 520) is the call's seconds.
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-520}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
KILN_PDL_TRIGGER=early timeout 150 python3 benchmarks/kernels/proto_ring_chain.py --layers 32 --ring-gemv-only \
  --ring-early 4,1 --between norm --step --json $OUT/ring_chain_small_early.json > $OUT/ring_chain_small_early.log 2>&1
echo "chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -12 $OUT/ring_chain_small_early.log
wait
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 100 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "${AB_VARIANTS:-tc=KILN_RING_GEMV=0;tcS=KILN_RING_GEMV=0 KILN_PDL_TRIGGER=early;tcE=KILN_RING_GEMV=0 KILN_PDL_EARLY=1;e4S=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early;e4E=KILN_RING_GEMV=1 KILN_PDL_EARLY=1;fused=KILN_RING_GEMV=fused;fusedS=KILN_RING_GEMV=fused KILN_PDL_TRIGGER=early;fusedE=KILN_RING_GEMV=fused KILN_PDL_EARLY=1;fused1S=KILN_RING_GEMV=fused KILN_RING_EARLY=1 KILN_PDL_TRIGGER=early}" \
  --json $OUT/ab_bf16_small_early.json > $OUT/ab_bf16_small_early.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_bf16_small_early.log | grep -A6 "kernel span\|^variant" | tail -75
KILN_PDL_TRIGGER=early timeout $((B - 10 - SECONDS + T0)) python3 -m pytest -q -n 4 -p no:cacheprovider \
  tests/gpu/test_ring_gemv_gpu.py tests/kernels/test_pdl.py > $OUT/gpu_tests_small_early.log 2>&1
echo "ring GPU tests (small kernels early) rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests_small_early.log | sed 's/ - .*//' | sort -u | head -10
tail -1 $OUT/gpu_tests_small_early.log
