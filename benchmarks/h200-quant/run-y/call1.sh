#!/usr/bin/env bash
# Session of 2026-12-04 (twentieth), call 1: the Gluon int4 GEMV (KILN_INT4_MMA=1,
# kiln/kernels/int4_gluon.py, written without a GPU): its GPU tests, the per-layer sweep
# (rows x ring slots x K splits, batch 1), then the int4-wo 8B engine at batch 1 with and
# without it (its default tiles are still the CPU-side guess), alternating.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 150 python3 -m pytest -q -n 4 tests/gpu/test_int4_gluon_gpu.py > $OUT/gpu_int4_mma.log 2>&1
tail -4 $OUT/gpu_int4_mma.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((330 - SECONDS + T0)) python3 benchmarks/kernels/sweep_gemv.py --schemes int4-mma \
  --json $OUT/sweep_int4_mma.json > $OUT/sweep_int4_mma.log 2>&1
cat $OUT/sweep_int4_mma.log | tail -12
echo "sweep done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=int4-wo TP=0 B1=1 VARIANTS="base=;mma=KILN_INT4_MMA=1;base2=;mma2=KILN_INT4_MMA=1" \
  timeout $((588 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['quant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
tail -4 $OUT/variants.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
