#!/usr/bin/env bash
# Device call 2 (at most 570 s): row-granular dependencies (KILN_DATAFLOW) and RoPE in the decode
# attention kernel (KILN_ATTN_ROPE) on the H200, bf16 8B.
# 1. their GPU tests (the MLP, attention -> o_proj and qkv_proj -> attention boundaries with the
#    waiters' knobs; the decode kernel's RoPE and K/V write, bf16/fp16/fp8 cache) and the fixed
#    int4 LM-head test;
# 2. batch 1, 128/256, one process (benchmarks/ab_latency.py: the model loads once, each
#    variant's decode graph is captured again), 3 rounds of: default; KILN_ATTN_ROPE=1;
#    KILN_DATAFLOW=1 (attention -> o_proj, the MLP, the norms); both (then qkv_proj ->
#    attention too: every boundary of the layer); both but the norms; both with the waiters'
#    first weight tile in registers before their polls (KILN_DATAFLOW_EARLY_W=1), with 8 K
#    steps of their weights asked into L2 (KILN_DATAFLOW_PREFETCH=8), with the next kernel
#    launched as a waiter starts (KILN_DATAFLOW_EARLY_LAUNCH=1). If that harness fails, the
#    main variants one process each (run_variants_h200.sh);
# 3. the GEMV, kernel and engine tests (the tensor-core GEMV, _finish_tile and the decode attention
#    changed for every caller), as time allows.
#   bash benchmarks/h200-dataflow/call2.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
timeout 180 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_dataflow_gpu.py \
  tests/gpu/test_decode_rope_gpu.py \
  "tests/gpu/test_quant_gpu.py::test_weight_only_lm_head_engine" > $OUT/tests_dataflow.log 2>&1
echo "dataflow and rope tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|Error" $OUT/tests_dataflow.log | tail -15
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
R="KILN_DATAFLOW=1 KILN_ATTN_ROPE=1"
V="base=;rope=KILN_ATTN_ROPE=1;df=KILN_DATAFLOW=1;dfr=$R"
V="$V;dfrn=KILN_DATAFLOW=qkv,attn,mlp KILN_ATTN_ROPE=1;dfre=$R KILN_DATAFLOW_EARLY_W=1"
V="$V;dfrp=$R KILN_DATAFLOW_PREFETCH=8;dfrl=$R KILN_DATAFLOW_EARLY_LAUNCH=1"
timeout 300 python3 benchmarks/ab_latency.py --model $M --variants "$V" --rounds 3 \
  --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
rc=$?
echo "ab_latency bf16 rc $rc at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -12 $OUT/ab_bf16.log
if [ $rc -ne 0 ]; then
  QUANT=none VARIANTS="base=;rope=KILN_ATTN_ROPE=1;dfr=$R;base2=" \
    timeout 200 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  grep -E "^==|decode" $OUT/variants.log | head -20
fi
left=$((565 - SECONDS + T0))
timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_gpu.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_kernels_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
