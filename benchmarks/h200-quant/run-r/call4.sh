#!/usr/bin/env bash
# Ran on tree 0f92604.
# Session of 2026-12-03 (thirteenth), call 4: decode attention with five pipeline stages (the
# first count at which Triton 3.6 double-buffers the K/V loads behind the block-table load).
# 1. GPU tests of fast fp8 accumulation (now the default) and of the tile switch.
# 2. Decode attention sweep at 1000 x 192 and 32 x 4096 (bf16 and fp8 caches), and batch 1 as a
#    decode graph runs it (bf16, 384 keys).
# 3. 1000 x 128/128: the fp8 8B engine with an fp8 head and fp8 KV cache, default tile against
#    KILN_ATTN_LARGE_TILE=64,2,5; the bf16 checkpoint, the same pair.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 100 python3 -m pytest -q -x tests/gpu/test_quant_gpu.py -k "test_fp8 or producers" -n 8 \
  > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
timeout 60 python3 -m pytest -q tests/kernels/test_kernel_attention.py -k tile -p no:cacheprovider \
  > $OUT/tests_tile.log 2>&1; tail -1 $OUT/tests_tile.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
(cd benchmarks/kernels && timeout 150 python3 sweep_attention.py --only decode \
  --decode-shapes "1000,1,192;32,1,4096" --kv bf16,fp8 --fp8-asm on \
  --tiles "64,2,3;64,2,5;32,2,5;64,4,5;32,4,5;128,4,5" --out $OUT/sweep_stages.json > $OUT/sweep_stages.log 2>&1)
(cd benchmarks/kernels && timeout 60 python3 sweep_attention.py --only decode --decode-shapes "1,1,384" \
  --kv bf16 --graph-max-seq-len 8192 --tiles "64,4,2;64,4,5;64,2,5" --out $OUT/sweep_b1.json > $OUT/sweep_b1.log 2>&1)
echo "sweeps done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="kv8=--kv-cache-dtype=fp8;kv8s5=KILN_ATTN_LARGE_TILE=64,2,5 --kv-cache-dtype=fp8" \
  timeout $((520 - (SECONDS - T0) - 80)) bash benchmarks/run_variants_h200.sh
echo "fp8 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=none TP=1 B1=0 VARIANTS="bf16=;bf16s5=KILN_ATTN_LARGE_TILE=64,2,5" \
  timeout $((580 - (SECONDS - T0))) bash benchmarks/run_variants_h200.sh
echo "all done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
