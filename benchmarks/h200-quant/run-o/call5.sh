#!/usr/bin/env bash
# Prepared (ninth session), NOT yet run; after call1.sh on a warm machine (reuses /tmp/e8b-fp8). An fp8
# engine with an fp8 LM head, step-tuned with the head's GEMV among its launches, against the fp8
# engine of call 1 (bf16 head), batch 1 alternating. Run-k measured the fp8 head slower on fp8
# engines (334.5 against 337.8 tok/s) before the step tuning existed.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=fp8 BUILD_TAG=-head8 BUILD_ARGS="--lm-head-quant fp8" VARIANTS="head8=" timeout 330 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="tuned3=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=fp8 BUILD_TAG=-head8 VARIANTS="head8b=" timeout 45 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-fp8-head8/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_fp8_head8.json
