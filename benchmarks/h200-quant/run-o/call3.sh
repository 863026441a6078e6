#!/usr/bin/env bash
# Session of 2026-12-03 (tenth), right after call2.sh on a warm machine (reuses /tmp/llama-3-8b):
# int4-wo 8B engines built with the default decode-step tuning and without it, batch 1 alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=int4-wo VARIANTS="tuned=" timeout 250 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-nost BUILD_ARGS="--step-tuning-batch-sizes none" VARIANTS="nost=" timeout 150 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo VARIANTS="tuned2=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-nost VARIANTS="nost2=" timeout 45 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-int4-wo/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_int4.json
