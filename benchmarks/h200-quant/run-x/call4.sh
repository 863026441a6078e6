#!/usr/bin/env bash
# Next machine, call A: the Gluon int4 GEMV (KILN_INT4_MMA=1, kiln/kernels/int4_gluon.py), written
# without a GPU. Its GPU tests, then the per-layer sweep (rows x ring slots x K splits) against
# the FMA GEMV at batch 1. Call B (call5.sh) runs the 8B engine.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 240 python3 -m pytest -q -n 4 tests/gpu/test_int4_gluon_gpu.py > $OUT/gpu_int4_mma.log 2>&1
tail -4 $OUT/gpu_int4_mma.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((580 - SECONDS + T0)) python3 benchmarks/kernels/sweep_gemv.py --schemes int4-mma \
  --json $OUT/sweep_int4_mma.json > $OUT/sweep_int4_mma.log 2>&1
cat $OUT/sweep_int4_mma.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
