#!/usr/bin/env bash
# Ran on tree 7fbcd65 (KILN_TC_FLOAT_S3 present); removed in 3e59c5f after these results.
# Session of 2026-12-03 (twelfth), call 2. (1) bf16 checkpoint at batch 1: three-stage tensor-core
# GEMV candidates (KILN_TC_FLOAT_S3=1) with and without the early first tile (KILN_GEMV_EARLY_W=1),
# alternating with the default; their GPU tests first. (2) If time is left: run-p's kernel-time
# profile of the fp8 engine's 1000 x 128/128 run at 1024 sequences.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
KILN_TC_FLOAT_S3=1 timeout 110 python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_quant_gpu.py -k "tensor_core" 2>&1 | tail -4 | tee $OUT/tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=none VARIANTS="base=;s3ew=KILN_TC_FLOAT_S3=1 KILN_GEMV_EARLY_W=1;s3=KILN_TC_FLOAT_S3=1;base2=;s3ew2=KILN_TC_FLOAT_S3=1 KILN_GEMV_EARLY_W=1" \
  timeout $((430 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
echo "bf16 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
if [ $((SECONDS - T0)) -lt 400 ]; then
  timeout $((590 - SECONDS + T0)) bash benchmarks/h200-quant/run-p/call2.sh
fi
echo "all done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
