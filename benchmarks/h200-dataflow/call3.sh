#!/usr/bin/env bash
# Device call 3 (at most 570 s; right after call 2, on the same machine if it is still warm, else
# the 8B checkpoint is written again):
# 1. bf16 8B batch 1 as `kiln bench latency` runs it (one process, the default): the reference
#    for benchmarks/ab_latency.py's numbers;
# 2. the fp8 engine (kiln build --quant fp8): batch 1, 3 rounds of default / KILN_ATTN_ROPE=1 /
#    the same with its fp8 qkv_proj flowing into the attention (KILN_DATAFLOW=qkv) (ab_latency.py);
# 3. the int4-wo engine the same way, as time allows;
# 4. the rest of the GPU tests, as time allows.
#   bash benchmarks/h200-dataflow/call3.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
QUANT=none VARIANTS="base=" timeout 100 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "bf16 bench latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for Q in fp8 int4-wo; do
  QUANT=$Q B1=0 timeout 220 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "$Q build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  [ -d /tmp/e8b-$Q ] || continue
  V="base=;rope=KILN_ATTN_ROPE=1"
  [ $Q = fp8 ] && V="$V;ropeq=KILN_ATTN_ROPE=1 KILN_DATAFLOW=qkv"
  timeout 130 python3 benchmarks/ab_latency.py --model /tmp/e8b-$Q \
    --variants "$V" --rounds 3 --json $OUT/ab_$Q.json > $OUT/ab_$Q.log 2>&1
  echo "ab_latency $Q rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -4 $OUT/ab_$Q.log
  [ $((SECONDS - T0)) -gt 330 ] && break
done
grep -E "^==|decode|build" $OUT/variants.log | head -20
left=$((565 - SECONDS + T0))
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu \
  tests/sample --ignore=tests/gpu/test_quant_gpu.py --ignore=tests/gpu/test_engine_gpu.py \
  --ignore=tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
