#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 3: the transposed Gluon decode kernel (keys and head
# dims as tile rows, decode_fp8_keys_m_kernel): GPU tests (fp8 cache, the engine test with the
# Gluon kernel), kernel timings, then the fp8 8B engine at 1000 x 128/128: the default (Gluon,
# query heads as rows), the best transposed tile of the kernel timings, and KILN_ATTN_GLUON=0.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 200 python3 -m pytest -q -n 8 tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_engine_gpu.py \
  -k "gluon or quant_out or fp8_lm_head" > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
(cd benchmarks/kernels && timeout 100 python3 bench_decode_gluon.py --json $OUT/gluon.json) > $OUT/gluon.log 2>&1
cut -c1-110 $OUT/gluon.log
echo "kernels done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
KM=$(python3 -c "
import json; rows=[r for r in json.load(open('$OUT/gluon.json')) if r['variant'].startswith('1000x129-256 gluon keys-m') and 'us' in r]
b=min(rows, key=lambda r: r['us'])['variant'].split()[-2:]; print(f'{b[0][1:]},{b[1][1:]},1')")
echo "keys-m tile for the engine: $KM" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;km=KILN_ATTN_GLUON_TILE=$KM $F;triton=KILN_ATTN_GLUON=0 $F;base2=$F;km2=KILN_ATTN_GLUON_TILE=$KM $F" \
  timeout $((590 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], round(d.get('output_tokens_per_s')), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
