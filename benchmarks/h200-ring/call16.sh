#!/usr/bin/env bash
# Device call 16 (at most B = 560 s, any card): reads before the PDL wait (KILN_PDL_PREWAIT,
# default 1). The RMSNorm kernels now load their weight before they wait (it was read after the
# row's sum, one more memory round trip per norm on the batch-1 critical path), and the small-
# batch decode attention kernel reads the step's lengths, position, cos/sin and its first tile's
# block-table entries, and asks L2 for that tile's keys and values, before it waits.
# 1. GPU tests of the kernels and of the engine's greedy tokens with it on (the default);
# 2. the bf16 8B checkpoint, batch 1, 128/256, ab_latency, 2 rounds alternating, with and
#    without it, on the tensor-core path and on the ring path (small kernels early), profiles.
#   bash benchmarks/h200-ring/call16.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 200 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_decode_rope_gpu.py \
  tests/gpu/test_kernels_gpu.py tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_graph_inputs_gpu.py \
  > $OUT/gpu_tests_prewait.log 2>&1
echo "GPU tests rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_tests_prewait.log)" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_tests_prewait.log | sed 's/ - .*//' | sort -u | head -10
wait
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((B - 70 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $M --rounds 2 --profile-tokens 24 \
  --variants "${AB_VARIANTS:-tc0=KILN_RING_GEMV=0 KILN_PDL_PREWAIT=0;tc=KILN_RING_GEMV=0;ring0=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early KILN_PDL_PREWAIT=0;ring=KILN_RING_GEMV=1 KILN_PDL_TRIGGER=early}" \
  --json $OUT/ab_prewait.json > $OUT/ab_prewait.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^round" $OUT/ab_prewait.log | grep -A7 "kernel span\|^variant" | tail -45
left=$((B - 5 - SECONDS + T0))
[ $left -gt 40 ] && timeout $left python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_engine_gpu.py \
  -k "greedy or graph or batch1 or pdl" > $OUT/gpu_engine_prewait.log 2>&1
echo "engine GPU tests rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_engine_prewait.log 2>/dev/null)" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_engine_prewait.log 2>/dev/null | sed 's/ - .*//' | sort -u | head -10
