#!/usr/bin/env bash
# Session of 2026-12-04 (eighteenth), call 2: the Gluon decode kernel with the block-table entries
# read a tile ahead: GPU tests of the fp8 cache, kernel timings, the fp8 8B engine at
# 1000 x 128/128 alternating without / with KILN_ATTN_GLUON=1 three times, a profile with it.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 120 python3 -m pytest -q -n 8 tests/gpu/test_fp8_kv_gpu.py > $OUT/gpu_tests.log 2>&1
tail -4 $OUT/gpu_tests.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
(cd benchmarks/kernels && timeout 100 python3 bench_decode_gluon.py --json $OUT/gluon.json) > $OUT/gluon.log 2>&1
cut -c1-120 $OUT/gluon.log
echo "kernels done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
F="--kv-cache-dtype=fp8 --max-num-batched-tokens=32768"
G="KILN_ATTN_GLUON=1 $F"
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=$F;gluon=$G;base2=$F;gluon2=$G;base3=$F;gluon3=$G" \
  timeout $((500 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], round(d.get('output_tokens_per_s'))) for d in map(json.loads, sys.stdin)]"
echo "variants done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
KILN_ATTN_GLUON=1 timeout $((590 - SECONDS + T0)) python3 benchmarks/profile/profile_engine.py --model /tmp/e8b-fp8-head \
  --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 32768 \
  --kv-cache-dtype fp8 --top 12 --json $OUT/profile.json > $OUT/profile.txt 2>&1
grep -v Warn $OUT/profile.txt | head -24
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
