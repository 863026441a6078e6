#!/usr/bin/env bash
# Device call 14 (prepared in the session of 2026-12-05, twenty-ninth, not yet run; at most 570 s):
# the warm-up's extra prompts (PREFILL_WARM_UP_ROWS, 16/32/33/128/261/272 tokens) on the int4-wo
# 8B engine, whose batch-1 A/Bs compiled 2 kernels after start-up in run-d (call 12; 3 in call
# 10): kiln bench latency at batch 1 (128 in / 256 out) must report none, and its start-up time
# against run-d's (12.9 s in ab_latency). Then the GPU test files whose engines assert nothing
# compiled after start-up.
#   bash benchmarks/h200-dataflow/call14.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
QUANT=int4-wo B1=0 OUT=$OUT/build timeout 330 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "int4-wo build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for prompt in 128 96; do
  left=$((480 - SECONDS + T0)); [ $left -lt 40 ] && break
  timeout $left python3 -m kiln.cli bench latency --model /tmp/e8b-int4-wo --batch-size 1 \
    --input-len $prompt --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress \
    --json $OUT/lat_int4_in$prompt.json 2>&1 | tail -3
  python3 -c "import json; d=json.load(open('$OUT/lat_int4_in$prompt.json')); print('compiles after start-up', d.get('kernel_compiles_after_startup'), 'start-up s', d.get('startup_seconds'))"
done
left=$((565 - SECONDS + T0))
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_engine_gpu.py \
  tests/gpu/test_decode_rope_gpu.py tests/gpu/test_graph_inputs_gpu.py > $OUT/gpu_tests.log 2>&1
tail -2 $OUT/gpu_tests.log
