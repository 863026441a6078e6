#!/usr/bin/env bash
# For the next machine, call 1 (at most 585 s): the GPU tests written without a GPU (run-y's two,
# and the int4 row-block ones: kernels bit-equal to row-major, the engine's greedy tokens), the
# read-only weight-stream probe (is the int4 GEMV's 64 bytes a row a step the ceiling, or its one
# step in flight?), then the int4 GEMV sweep at batch 1 on row-major weights and on blocks of 16
# and 64 rows, and with K-group-major scales, most telling first.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
left() { echo $((585 - SECONDS + T0)); }
timeout 200 python3 -m pytest -q -n 3 tests/gpu/test_quant_gpu.py tests/gpu/test_engine_gpu.py \
  -k "weight_only_lm_head or quant_out or row_block" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 150 python3 benchmarks/kernels/probe_weight_stream.py --quick --json $OUT/probe.json \
  > $OUT/probe.log 2>&1
grep -v "^ " $OUT/probe.log | tail -100
echo "probe done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
# (at most 8 files come back: the sweeps' JSON travel as one tarball, their logs as one file)
mkdir -p /tmp/sweeps
for v in "rb1:1:" "rb16:16:" "rb16kn:16:--int4-scales-kn" "rb64:64:" "rb1kn:1:--int4-scales-kn"; do
  name=${v%%:*}; rest=${v#*:}; rb=${rest%%:*}; extra=${rest#*:}
  [ "$(left)" -lt 40 ] && break
  t=$(left); [ $t -gt 80 ] && t=80
  echo "== $name (row block $rb $extra)" >> $OUT/sweeps.log
  timeout $t python3 benchmarks/kernels/sweep_gemv.py --schemes int4 --int4-row-block $rb $extra \
    --json /tmp/sweeps/sweep_int4_$name.json >> $OUT/sweeps.log 2>&1
done
cat $OUT/sweeps.log | grep -v "^ "
tar -czf $OUT/sweeps.tar.gz -C /tmp sweeps
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
