#!/usr/bin/env bash
# Prepared (ninth session), NOT yet run: as call1.sh, int4-wo. On a warm machine the checkpoint of
# call 1 is reused.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=int4-wo VARIANTS="tuned=" timeout 360 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-nost BUILD_ARGS="--step-tuning-batch-sizes none" VARIANTS="nost=" timeout 150 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo VARIANTS="tuned2=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-nost VARIANTS="nost2=" timeout 45 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-int4-wo/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_int4.json
grep -h "build\|step" $OUT/variants.log | head -20
