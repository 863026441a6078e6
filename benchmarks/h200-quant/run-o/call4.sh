#!/usr/bin/env bash
# Session of 2026-12-03 (tenth): every GPU test (every build on the GPU in them runs the decode-step
# tuning; the fp8 tensor-core GEMV now loads its first weight tile before the PDL wait), then an
# fp8 8B build that prints what its step tuning cost (engine start and search).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
set -o pipefail
timeout 330 python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu 2>&1 | tail -40 | tee $OUT/tests_gpu.log
QUANT=fp8 VARIANTS="base=" timeout 170 bash benchmarks/run_variants_h200.sh
