#!/usr/bin/env bash
# Device call 3 (at most 570 s; right after call 2, on the same machine if it is still warm, else
# the 8B checkpoint is written again):
# 1. bf16 8B batch 1, 128/256, alternating, the parts of KILN_DATAFLOW: attn only, mlp only, both
#    with 8 K steps of the waiters' weights asked into L2 before their polls
#    (KILN_DATAFLOW_PREFETCH=8), both with RoPE in the decode kernel again, default;
# 2. the fp8 engine (kiln build --quant fp8) at batch 1: default, KILN_ATTN_ROPE=1, twice each;
# 3. the rest of the GPU tests, as time allows.
#   bash benchmarks/h200-dataflow/call3.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
V="dfa=KILN_DATAFLOW=attn;dfm=KILN_DATAFLOW=mlp;dfp=KILN_DATAFLOW=1 KILN_DATAFLOW_PREFETCH=8"
V="$V;dfr2=KILN_DATAFLOW=1 KILN_ATTN_ROPE=1;base3="
QUANT=none VARIANTS="$V" timeout 260 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "bf16 variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 VARIANTS="base=;rope=KILN_ATTN_ROPE=1;base2=;rope2=KILN_ATTN_ROPE=1" \
  timeout 250 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode|build" $OUT/variants.log | head -40
left=$((565 - SECONDS + T0))
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu \
  tests/sample --ignore=tests/gpu/test_quant_gpu.py --ignore=tests/gpu/test_engine_gpu.py \
  --ignore=tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
