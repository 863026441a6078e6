#!/usr/bin/env bash
# Device call 9 (session of 2026-12-05, twenty-ninth; at most 570 s): the whole GPU suite
# (tests/gpu, tests/sample) with KILN_ATTN_ROPE=1 in the environment, -v so that every failure is
# named as it happens even if the time limit cuts the run; 8 workers on an H200, 6 on an 80 GB card.
#   bash benchmarks/h200-dataflow/call9.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
N=8; [ "${MEM:-0}" -lt 100000 ] && N=6
KILN_ATTN_ROPE=1 timeout 540 python3 -m pytest -v -n $N -p no:cacheprovider --durations=25 \
  tests/gpu tests/sample > $OUT/gpu_tests_rope.log 2>&1
echo "GPU suite with KILN_ATTN_ROPE=1 (-n $N) rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests_rope.log | sed 's/ - .*//' | sort -u | head -40
tail -3 $OUT/gpu_tests_rope.log
