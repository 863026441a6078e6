#!/usr/bin/env bash
# Ran on tree 3e59c5f (KILN_GEMV_EARLY_G still present); the switch was removed in 002afef after these results.
# Session of 2026-12-03 (twelfth), call 3: run-p's int4 A/B of KILN_GEMV_EARLY_G=1 (the FMA GEMV
# loads its first K group before the PDL wait), alternating with the default on one engine
# (built without the step tuning, so both variants run the same tuned configurations).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
QUANT=int4-wo BUILD_ARGS="--step-tuning-batch-sizes none" \
  VARIANTS="base=;eg=KILN_GEMV_EARLY_G=1;base2=;eg2=KILN_GEMV_EARLY_G=1;base3=;eg3=KILN_GEMV_EARLY_G=1" \
  timeout 560 bash benchmarks/run_variants_h200.sh
echo "all done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
