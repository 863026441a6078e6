#!/usr/bin/env bash
# Device call 2 (at most 560 s): the ring GEMV in the engine (kiln/kernels/ring_gemv.py,
# KILN_RING_GEMV): its GPU tests, then bf16 8B batch 1 (128 in / 256 out)
# with and without it, alternating in one process (ab_latency.py), 3 rounds.
#   bash benchmarks/h200-ring/call2.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 200 python3 -m pytest -v -n 4 -p no:cacheprovider tests/gpu/test_ring_gemv_gpu.py > $OUT/gpu_tests.log 2>&1
echo "ring GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -20
grep -E "^E " $OUT/gpu_tests.log | head -10
tail -1 $OUT/gpu_tests.log
wait
timeout $((${LIMIT:-555} - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M \
  --variants "${VARIANTS:-ring=KILN_RING_GEMV=1;tc=KILN_RING_GEMV=0}" --rounds ${ROUNDS:-3} \
  --json $OUT/ab_bf16_ring.json > $OUT/ab_bf16_ring.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_bf16_ring.log
