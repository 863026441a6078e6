#!/usr/bin/env bash
# Device call 2 (at most 570 s): row-granular dependencies (KILN_DATAFLOW) and RoPE in the decode
# attention kernel (KILN_ATTN_ROPE) on the H200.
# 1. their GPU tests (the MLP and the attention -> o_proj boundary with the waiters' early weight
#    reads; the decode kernel's RoPE and K/V write, bf16/fp16/fp8 cache) and the fixed int4
#    LM-head test;
# 2. bf16 8B batch 1, 128/256, alternating: default; KILN_ATTN_ROPE=1; KILN_DATAFLOW=1 (the
#    attention -> o_proj and MLP boundaries); both with RoPE in the attention (then qkv_proj ->
#    attention flows too); the same with the waiters letting the next kernel launch early
#    (KILN_DATAFLOW_EARLY_LAUNCH=1); default again;
# 3. the GEMV, kernel and engine tests (the tensor-core GEMV, _finish_tile and the decode attention
#    changed for every caller), as time allows.
#   bash benchmarks/h200-dataflow/call2.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_dataflow_gpu.py \
  tests/gpu/test_decode_rope_gpu.py \
  "tests/gpu/test_quant_gpu.py::test_weight_only_lm_head_engine" > $OUT/tests_dataflow.log 2>&1
echo "dataflow and rope tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|Error" $OUT/tests_dataflow.log | tail -15
R="KILN_DATAFLOW=1 KILN_ATTN_ROPE=1"
V="base=;rope=KILN_ATTN_ROPE=1;df=KILN_DATAFLOW=1;dfr=$R;dfrl=$R KILN_DATAFLOW_EARLY_LAUNCH=1"
V="$V;base2="
QUANT=none VARIANTS="$V" timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode" $OUT/variants.log | head -30
left=$((565 - SECONDS + T0))
timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_gpu.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
