#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (tenth), NOT yet run. The FMA GEMV loading its first K group
# before the PDL wait (KILN_GEMV_EARLY_G=1, off): its GPU bit test, then the int4-wo 8B engine at
# batch 1, alternating with the default (the fp8 tensor-core GEMV's first-tile load gave +1.3%).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gpu.py -k "early_group or early_weights" 2>&1 | tail -15 | tee $OUT/early_tests.log
QUANT=int4-wo BUILD_ARGS="--step-tuning-batch-sizes none" \
  VARIANTS="base=;eg=KILN_GEMV_EARLY_G=1;base2=;eg2=KILN_GEMV_EARLY_G=1" timeout 400 bash benchmarks/run_variants_h200.sh
