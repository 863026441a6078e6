#!/usr/bin/env bash
# Device call 20 (prepared in the session of 2026-12-06, thirty-eighth; at most B = 420 s, any
# card). On the ring path the early reads of call 16 moved time from the small kernels into
# the ring GEMVs (H100: attention -64, norms -30, ring GEMVs +95 us a step): that step is bound
# by its weight stream, at about 90% of copy against 99.5% for the GEMVs back to back. One
# guess: with two ring programs of 88-108 KB of shared memory an SM, the next GEMV's programs
# cannot be resident until this GEMV's leave, so at each of the 129 boundaries the memory
# pipeline drains and refills (about 1.5-2 us, some 0.2-0.26 ms a step). With one program an SM
# (KILN_RING_PER_SM=1) two consecutive GEMVs' programs fit an SM together, and the next one's
# early copies start while this one streams. 1. the ring GPU tests with one program an SM;
# 2. the bf16 8B checkpoint, batch 1, 128/256, ab_latency, two rounds alternating: tc, ring (two
# an SM), p1 (one an SM, 5 stages), p1s6 (one an SM, 6 stages), with 24-token profiles.
#   bash benchmarks/h200-ring/call20.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-420}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
KILN_RING_PER_SM=1 timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_ring_gemv_gpu.py \
  > $OUT/gpu_tests_ring_p1.log 2>&1
echo "ring GPU tests (one program an SM) rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_tests_ring_p1.log)" \
  | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests_ring_p1.log | sed 's/ - .*//' | sort -u | head -10
wait
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 10 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "tc=KILN_RING_GEMV=0;ring=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early;p1=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early KILN_RING_PER_SM=1;p1s6=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early KILN_RING_PER_SM=1 KILN_RING_STAGES=6" \
  --json $OUT/ab_ring_p1.json > $OUT/ab_ring_p1.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_ring_p1.log | grep -A6 "kernel span\|^variant" | tail -36
