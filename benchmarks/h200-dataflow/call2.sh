#!/usr/bin/env bash
# Device call 2 (at most 330 s): the row-granular MLP (KILN_DATAFLOW=1) on the H200.
# 1. its GPU tests and the fixed int4 LM-head test;
# 2. bf16 8B batch 1, 128/256, alternating: default, KILN_DATAFLOW=1, the same with the first weight
#    tile loaded before waiting (KILN_GEMV_EARLY_W=1), KILN_DATAFLOW=1 again, default again;
# 3. the GEMV tests (the tensor-core GEMV and _finish_tile changed for every caller), then the
#    engine tests, as time allows.
#   bash benchmarks/h200-dataflow/call2.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_dataflow_gpu.py \
  "tests/gpu/test_quant_gpu.py::test_weight_only_lm_head_engine" > $OUT/tests_dataflow.log 2>&1
echo "dataflow tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|Error" $OUT/tests_dataflow.log | tail -15
QUANT=none VARIANTS="base=;df=KILN_DATAFLOW=1;dfe=KILN_DATAFLOW=1 KILN_GEMV_EARLY_W=1;df2=KILN_DATAFLOW=1;base2=" \
  timeout 215 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode" $OUT/variants.log | head -20
left=$((325 - SECONDS + T0))
timeout $left python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_quant_gpu.py \
  tests/gpu/test_engine_gpu.py > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
