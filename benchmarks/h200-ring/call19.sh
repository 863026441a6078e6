#!/usr/bin/env bash
# Device call 19 (prepared in the session of 2026-12-06, thirty-eighth; at most B = 560 s, any
# card): the fp8 ring GEMV (kiln.kernels.ring_fp8, KILN_RING_FP8=1), written after that
# session's device time was spent. 1. its GPU tests (the 8B's shapes against the reference,
# bias, refusals, a four-GEMV chain in a graph with PDL, an fp8 engine's greedy tokens);
# 2. the fp8 8B engine built (run_variants_h200.sh), batch 1 128/256, ab_latency, two rounds
# alternating, without and with it, with a per-kernel profile of 24 tokens each.
#   bash benchmarks/h200-ring/call19.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 200 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_ring_fp8_gpu.py > $OUT/gpu_tests_ring_fp8.log 2>&1
echo "GPU tests rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_tests_ring_fp8.log)" | tee -a $OUT/times.log
grep -E "FAILED|ERROR|Error|assert" $OUT/gpu_tests_ring_fp8.log | head -20
QUANT=fp8 B1=0 timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1  # builds apart from the tests' load
echo "engine ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 10 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model /tmp/e8b-fp8 --rounds 2 --profile-tokens 24 \
  --variants "off=KILN_RING_FP8=0;on=KILN_RING_FP8=1" --json $OUT/ab_ring_fp8.json > $OUT/ab_ring_fp8.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_ring_fp8.log | grep -A8 "kernel span\|^variant" | tail -24
