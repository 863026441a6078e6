#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 6 (same machine): the Gluon engine test after building
# its engine for its batch (max_batch_size); it then failed in the second engine's warm-up (the
# compile watch could not serialize the layout arguments), fixed in 36eead0, not re-run.
export PYTHONPATH=$PWD
timeout 150 python3 -m pytest -q tests/gpu/test_engine_gpu.py -k "gluon" > $OUT/engine_gluon_test.log 2>&1
tail -3 $OUT/engine_gluon_test.log
