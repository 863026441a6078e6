#!/usr/bin/env bash
# Session of 2026-12-04 (nineteenth), call 1: the Gluon engine test (never passed on the H200
# before), the L2 prefetch GPU tests, then bf16 8B batch 1 with the side-stream L2 prefetch
# (KILN_L2_PREFETCH o,gate_up,down,qkv MiB; KILN_L2_PREFETCH_MODE 1 plain, 2 evict_last, 3 bulk).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q tests/gpu/test_engine_gpu.py -k gluon > $OUT/gpu_gluon_engine.log 2>&1
tail -3 $OUT/gpu_gluon_engine.log
timeout 120 python3 -m pytest -q -n 4 tests/gpu/test_l2_prefetch_gpu.py > $OUT/gpu_l2.log 2>&1
tail -3 $OUT/gpu_l2.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=none TP=0 B1=1 VARIANTS="base=;o=KILN_L2_PREFETCH=34,0,0,0;all=KILN_L2_PREFETCH=34,8,6,8;all2=KILN_L2_PREFETCH=34,8,6,8 KILN_L2_PREFETCH_MODE=2;all3=KILN_L2_PREFETCH=34,8,6,8 KILN_L2_PREFETCH_MODE=3;base2=" \
  timeout $((585 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
tail -5 $OUT/variants.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
