#!/usr/bin/env bash
# Device call 1 (at most 580 s, a fresh H200):
# 1. what the step's dependencies cost at batch 1, bf16 8B, 128/256: the engine as it is against
#    the same engine with kernels not waiting for the kernel before them (ablate/sitecustomize.py:
#    every kernel; only the gate_up -> down boundary; only attention -> o_proj; both), base twice;
# 2. the GPU tests (tests/gpu, tests/sample) on this tree (the int4 row-block default and the
#    LM-head warm-up had not run there as a whole).
#   bash benchmarks/h200-dataflow/call1.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
A=$PWD/benchmarks/h200-dataflow/ablate
W="KILN_ABLATE_WAIT"
QUANT=none PYTHONPATH=$A VARIANTS="base=;all=$W=all;mlp=$W=mlp;o=$W=o;mo=$W=mlp,o;base2=" \
  timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "variants rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^==|decode|tok/s|ablate" $OUT/variants.log | head -40
python3 -c "
import json
for l in open('$OUT/variants.jsonl'):
    d = json.loads(l); print(d['variant'], {k: v for k, v in d.items() if 'tok' in k or 'tpot' in k.lower()})
"
left=$((575 - SECONDS + T0))
export PYTHONPATH=$PWD
timeout $left python3 -m pytest -q -n 8 tests/gpu tests/sample -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "passed|failed|FAILED|ERROR" $OUT/gpu_tests.log | tail -25
