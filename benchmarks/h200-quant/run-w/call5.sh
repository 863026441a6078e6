#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 5 (same machine as call 4): the engine GPU tests that
# failed in call 4 for GPU memory under `-n 8`, run one at a time.
export PYTHONPATH=$PWD
timeout 280 python3 -m pytest -q tests/gpu/test_engine_gpu.py \
  -k "gluon or quant_out or fp8_lm_head or tunes_the_decode or graphs_equals_eager" > $OUT/engine_tests.log 2>&1
tail -5 $OUT/engine_tests.log
