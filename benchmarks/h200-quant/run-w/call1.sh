#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 1: the one-warp Gluon decode kernel over an fp8 cache
# (kiln.kernels.decode_gluon, KILN_ATTN_GLUON=1): GPU tests, kernel timings against the Triton
# kernel, then the fp8 8B engine at 1000 x 128/128 with and without it (alternating).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -x -n 4 tests/gpu/test_fp8_kv_gpu.py -k gluon > $OUT/gpu_tests.log 2>&1
tail -15 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
(cd benchmarks/kernels && timeout 150 python3 bench_decode_gluon.py --json $OUT/gluon.json) > $OUT/gluon.log 2>&1
cat $OUT/gluon.log | cut -c1-200
echo "kernels done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;gluon=KILN_ATTN_GLUON=1 $F;base2=$F;gluon2=KILN_ATTN_GLUON=1 $F" \
  timeout $((590 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d.get('output_tokens_per_s')) for d in map(json.loads, sys.stdin)]"
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
