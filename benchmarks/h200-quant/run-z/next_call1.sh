#!/usr/bin/env bash
# For the next machine, call 1 (about 330 s): the GPU tests written without a GPU (run-y's two,
# and the int4 row-block ones: kernels bit-equal to row-major, the engine's greedy tokens), the
# read-only weight-stream probe (is the int4 GEMV's 64 bytes a row a step the ceiling?), and the
# int4 GEMV sweep at batch 1 on row-major weights and on blocks of 16 and 64 rows.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 200 python3 -m pytest -q -n 3 tests/gpu/test_quant_gpu.py tests/gpu/test_engine_gpu.py \
  -k "weight_only_lm_head or quant_out or row_block" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 150 python3 benchmarks/kernels/probe_weight_stream.py --quick --json $OUT/probe.json \
  > $OUT/probe.log 2>&1
cat $OUT/probe.log | tail -50
echo "probe done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
for rb in 1 16 64; do
  timeout 90 python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --int4-row-block $rb \
    --json $OUT/sweep_int4_rb$rb.json > $OUT/sweep_int4_rb$rb.log 2>&1
  tail -4 $OUT/sweep_int4_rb$rb.log
done
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
