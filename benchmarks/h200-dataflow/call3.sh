#!/usr/bin/env bash
# Device call 3 (at most 570 s; right after call 2, on the same machine if it is still warm, else
# the 8B checkpoint is written again):
# 1. bf16 8B batch 1, 128/256, alternating, the parts of KILN_DATAFLOW: attn only, mlp only;
#    then all three boundaries (RoPE in the attention) with the waiters' first weight tile in
#    registers before their polls (KILN_DATAFLOW_EARLY_W=1), with 8 K steps of their weights
#    asked into L2 before their polls (KILN_DATAFLOW_PREFETCH=8), plain again; default;
# 2. the fp8 engine (kiln build --quant fp8) at batch 1: default, KILN_ATTN_ROPE=1, default;
# 3. the rest of the GPU tests, as time allows.
#   bash benchmarks/h200-dataflow/call3.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
R="KILN_DATAFLOW=1 KILN_ATTN_ROPE=1"
V="dfa=KILN_DATAFLOW=attn;dfm=KILN_DATAFLOW=mlp;dfre=$R KILN_DATAFLOW_EARLY_W=1"
V="$V;dfrp=$R KILN_DATAFLOW_PREFETCH=8;dfr2=$R;base3="
QUANT=none VARIANTS="$V" timeout 290 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "bf16 variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 VARIANTS="base=;rope=KILN_ATTN_ROPE=1;base2=" \
  timeout 260 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode|build" $OUT/variants.log | head -40
left=$((565 - SECONDS + T0))
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu \
  tests/sample --ignore=tests/gpu/test_quant_gpu.py --ignore=tests/gpu/test_engine_gpu.py \
  --ignore=tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
