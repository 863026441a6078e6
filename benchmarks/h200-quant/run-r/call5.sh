#!/usr/bin/env bash
# Ran on tree ca9c624.
# Session of 2026-12-03 (thirteenth), call 5: the GPU suite after call 4's test_fp8 failures
# (fast accumulation's float16 error above the promoted path's 2e-3 bound); test_fp8 now checks
# both accumulation modes, each at its own bound.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
timeout 330 python3 -m pytest -q tests/gpu -n 8 -p no:cacheprovider > $OUT/gpu_tests.log 2>&1
echo "rc=$?" >> $OUT/gpu_tests.log
