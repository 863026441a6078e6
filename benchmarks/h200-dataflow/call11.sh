#!/usr/bin/env bash
# Device call 11 (session of 2026-12-05, twenty-ninth; at most 570 s): decode-graph inputs in one
# staged copy (KILN_GRAPH_STAGED_INPUTS, default 1) against a copy and a kernel per buffer (0).
# 1. bf16 8B batch 1, 128/256, ab_latency.py, 4 rounds alternating (the switch is read when the
#    graphs are captured, which ab_latency does again per variant);
# 2. the whole GPU suite (tests/gpu, tests/sample), -v, 8 workers on an H200, 6 on an 80 GB card.
#   bash benchmarks/h200-dataflow/call11.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
timeout 200 python3 benchmarks/ab_latency.py --model $M \
  --variants "staged=;copies=KILN_GRAPH_STAGED_INPUTS=0" --rounds 4 \
  --json $OUT/ab_bf16_staged.json > $OUT/ab_bf16_staged.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -4 $OUT/ab_bf16_staged.log
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
N=8; [ "${MEM:-0}" -lt 100000 ] && N=6
left=$((565 - SECONDS + T0))
timeout $left python3 -m pytest -v -n $N -p no:cacheprovider tests/gpu/test_graph_inputs_gpu.py \
  tests/gpu tests/sample > $OUT/gpu_tests.log 2>&1
echo "GPU suite (-n $N) rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -30
tail -2 $OUT/gpu_tests.log
