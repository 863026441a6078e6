#!/usr/bin/env bash
# Session of 2026-12-04 (seventeenth), call 3:
# 1. fp8 8B engine, 1000 x 128/128: default (32768-token steps), large decode tile 32 keys /
#    2 warps / 5 stages and 64 / 2 / 5, 65536-token steps, default again;
# 2. a trace of the default run and where the GPU idles in it (gaps.py).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;t32s5=KILN_ATTN_LARGE_TILE=32,2,5 $F;t64s5=KILN_ATTN_LARGE_TILE=64,2,5 $F;mnbt64k=--kv-cache-dtype=fp8 --max-num-batched-tokens=65536;base2=$F" \
  timeout 380 bash benchmarks/run_variants_h200.sh
echo "variants done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((560 - SECONDS + T0)) python3 benchmarks/profile/profile_engine.py --model /tmp/e8b-fp8-head \
  --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 32768 \
  --kv-cache-dtype fp8 --top 30 --json $OUT/profile.json --trace /tmp/trace.json > $OUT/profile.txt 2>&1
tail -30 $OUT/profile.txt
python3 benchmarks/profile/gaps.py /tmp/trace.json --json $OUT/gaps.json > $OUT/gaps.txt 2>&1
head -60 $OUT/gaps.txt
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
