#!/usr/bin/env bash
# For the next machine, call 4 (about 400 s): the tensor-core GEMV's stream-K as one loop over a
# program's units (FLAT, mma_gemv._tc_stream_k_flat). First its GPU bit test against the loop per
# tile (8B shapes, bf16 and fp8, fused reduce), then, per 8B layer at batch 1, the split-K
# candidates' best against stream-K with a loop per tile and with the flat loop
# (bench_stream_k.py --flat). If the flat loop beats split-K, call 5 runs the engines.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 4 tests/gpu/test_quant_gpu.py -k "flat_stream_k" \
  > $OUT/gpu_tests_flat.log 2>&1
tail -4 $OUT/gpu_tests_flat.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((570 - SECONDS + T0)) python3 benchmarks/kernels/bench_stream_k.py \
  --schemes bf16-tc,fp8-tc --flat --json $OUT/stream_k_flat.json > $OUT/stream_k_flat.log 2>&1
cat $OUT/stream_k_flat.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
