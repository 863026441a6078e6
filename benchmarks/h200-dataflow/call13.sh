#!/usr/bin/env bash
# Device call 13 (prepared in the session of 2026-12-05, twenty-ninth, not yet run; at most 570 s):
# 1. the two engine tests that now take a fixed KV cache (num_kv_blocks=512) instead of 20% of the
#    card, under 8 workers with the rest of the GPU suite (they ran out of KV memory beside other
#    workers in calls 9 and 11);
# 2. bf16 8B 1000 x 128/128 (1024 sequences, 32,768-token steps) with staged graph inputs and
#    with the per-buffer copies, alternating, once each: no loss expected at large batches.
#   bash benchmarks/h200-dataflow/call13.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
N=8; [ "${MEM:-0}" -lt 100000 ] && N=6
timeout 280 python3 -m pytest -v -n $N -p no:cacheprovider tests/gpu/test_decode_rope_gpu.py \
  tests/gpu/test_graph_inputs_gpu.py tests/gpu/test_engine_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests (-n $N) rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -20
tail -1 $OUT/gpu_tests.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
for v in staged copies; do
  left=$((${LIMIT:-560} - SECONDS + T0)); [ $left -lt 60 ] && break
  S=1; [ $v = copies ] && S=0
  KILN_GRAPH_STAGED_INPUTS=$S timeout $left python3 -m kiln.cli bench throughput --model $M \
    --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 \
    --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_$v.json 2>&1 | tail -2
  echo "throughput $v rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
done
