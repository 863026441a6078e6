#!/usr/bin/env bash
# Session of 2026-12-03 (tenth). fp8 8B engine built with the default decode-step tuning (its build
# wall time is the 3-minute bar's figure), then batch 1 with the tensor-core GEMV loading its first
# 1, 2 or 4 weight tiles before the PDL wait (KILN_GEMV_EARLY_W), alternating with the default;
# then the GPU test that EARLY_W changes no bit.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv | tee $OUT/gpu.txt
QUANT=fp8 VARIANTS="base=;ew2=KILN_GEMV_EARLY_W=2;ew1=KILN_GEMV_EARLY_W=1;ew4=KILN_GEMV_EARLY_W=4;base2=;ew2b=KILN_GEMV_EARLY_W=2" \
  timeout 470 bash benchmarks/run_variants_h200.sh
python3 -c "import json; print(json.dumps(json.load(open('/tmp/e8b-fp8/engine.json'))['kernel_tuning'].get('in_situ'), indent=1))" > $OUT/in_situ_fp8.json
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gpu.py -k early_weights 2>&1 | tail -15 | tee $OUT/early_w_tests.log
