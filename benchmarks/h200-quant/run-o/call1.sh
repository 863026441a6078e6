#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (ninth), NOT yet run. fp8 8B engines built with the decode-step
# tuning (the default now, --step-tuning-batch-sizes 1) and without it (none), batch 1 alternating;
# the build's wall time with the step tuning is the 3-minute bar's figure.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=fp8 VARIANTS="tuned=" timeout 330 bash benchmarks/run_variants_h200.sh
QUANT=fp8 BUILD_TAG=-nost BUILD_ARGS="--step-tuning-batch-sizes none" VARIANTS="nost=" timeout 120 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="tuned2=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=fp8 BUILD_TAG=-nost VARIANTS="nost2=" timeout 45 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-fp8/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_fp8.json
grep -h "build\|step" $OUT/variants.log | head -20
