#!/usr/bin/env bash
# Every GPU test, since every build on the GPU in them now
# runs the decode-step tuning.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
set -o pipefail
timeout 500 python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu 2>&1 | tail -40 | tee $OUT/tests_gpu.log
