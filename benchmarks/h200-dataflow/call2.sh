#!/usr/bin/env bash
# Device call 2 (at most 560 s): row-granular dependencies (KILN_DATAFLOW) on the H200.
# 1. their GPU tests (the MLP and the attention -> o_proj boundary, with the waiters' early weight
#    reads) and the fixed int4 LM-head test;
# 2. bf16 8B batch 1, 128/256, alternating: default; KILN_DATAFLOW=1 (both boundaries); attn
#    only; mlp only; both with the waiters' first weight tile in registers before their polls
#    (KILN_DATAFLOW_EARLY_W=1); both with 8 K steps of the waiters' weights asked into L2 before
#    their polls (KILN_DATAFLOW_PREFETCH=8); default again;
# 3. the GEMV and engine tests (the tensor-core GEMV, _finish_tile and the decode attention
#    changed for every caller), as time allows.
#   bash benchmarks/h200-dataflow/call2.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_dataflow_gpu.py \
  "tests/gpu/test_quant_gpu.py::test_weight_only_lm_head_engine" > $OUT/tests_dataflow.log 2>&1
echo "dataflow tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|Error" $OUT/tests_dataflow.log | tail -15
V="base=;df=KILN_DATAFLOW=1;dfa=KILN_DATAFLOW=attn;dfm=KILN_DATAFLOW=mlp"
V="$V;dfe=KILN_DATAFLOW=1 KILN_DATAFLOW_EARLY_W=1;dfp=KILN_DATAFLOW=1 KILN_DATAFLOW_PREFETCH=8"
V="$V;base2="
QUANT=none VARIANTS="$V" timeout 330 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode" $OUT/variants.log | head -30
left=$((555 - SECONDS + T0))
timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_gpu.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
