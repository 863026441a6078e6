#!/usr/bin/env bash
# Prepared (ninth session), NOT yet run: bf16. A --quant none engine (its tensor-core GEMV tuned per
# layer, then by the decode step) against the checkpoint itself (tuned at start-up), batch 1 alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=none BUILD_TAG=-eng VARIANTS="engine=" timeout 400 bash benchmarks/run_variants_h200.sh
QUANT=none VARIANTS="ckpt=" timeout 60 bash benchmarks/run_variants_h200.sh
QUANT=none BUILD_TAG=-eng VARIANTS="engine2=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=none VARIANTS="ckpt2=" timeout 60 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-none-eng/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_bf16.json
grep -h "build\|step" $OUT/variants.log | head -20
