#!/usr/bin/env bash
# Session of 2026-12-03 (tenth), right after call1.sh on a warm machine (reuses /tmp/llama-3-8b and
# /tmp/e8b-fp8). bf16 checkpoint at batch 1 with KILN_GEMV_EARLY_W alternating with the default;
# then an fp8 engine built without the step tuning against call 1's, alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
QUANT=none VARIANTS="base=;ew1=KILN_GEMV_EARLY_W=1;base2=;ew1b=KILN_GEMV_EARLY_W=1" \
  timeout 330 bash benchmarks/run_variants_h200.sh
QUANT=fp8 BUILD_TAG=-nost BUILD_ARGS="--step-tuning-batch-sizes none" VARIANTS="nost=" timeout 150 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="tuned2=;ew1c=KILN_GEMV_EARLY_W=1" timeout 80 bash benchmarks/run_variants_h200.sh
QUANT=fp8 BUILD_TAG=-nost VARIANTS="nost2=" timeout 45 bash benchmarks/run_variants_h200.sh
