#!/usr/bin/env bash
# Device call 9 (at most 560 s; after call 6 on the H100 of 2026-12-06 showed mma_int4 at R 2 x 8
# programs an SM 8% faster than the engine's int4 GEMV in the 8B chain): the fp8 engine test that
# failed there (QuantizedRows into the mma_direct hook), then the int4-wo 8B engine at batch 1
# 128/256, default against KILN_INT4_MMA=1 (ab_latency.py, one process, alternating).
#   bash benchmarks/h200-mma-int4/call9.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_mma_direct_gpu.py -k engine \
  > $OUT/gpu_tests.log 2>&1
echo "engine tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log; tail -1 $OUT/gpu_tests.log
QUANT=int4-wo B1=0 timeout $((400 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "int4-wo build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "build" $OUT/variants.log | head -4
[ -d /tmp/e8b-int4-wo ] || exit 0
KILN_INT4_MMA=1 timeout $((555 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model /tmp/e8b-int4-wo \
  --variants "base=KILN_INT4_MMA=0;mma=KILN_INT4_MMA=1" --rounds 2 --json $OUT/ab_int4.json \
  > $OUT/ab_int4.log 2>&1
echo "ab_latency int4-wo rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_int4.log
