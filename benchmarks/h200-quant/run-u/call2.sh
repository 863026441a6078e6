#!/usr/bin/env bash
# Session of 2026-12-04 (sixteenth), call 2:
# (HEAD_MAJOR was a temporary kernel flag and KILN_ATTN_HEAD_MAJOR its switch; both were removed after this call.)
# 1. the engine's decode kernel with its programs ordered kv head first (head_major) against the
#    default order, fp8 and bf16 caches, 1000 sequences at 128/192/256 keys and small batches;
# 2. fp8 8B engine (fp8 head, fp8 KV), 1000 x 128/128 at --max-num-batched-tokens 32768:
#    default against KILN_ATTN_HEAD_MAJOR=1;
# 3. bf16 8B checkpoint, 1000 x 128/128: the last layer on the sampled rows only (default)
#    against every row (KILN_LAST_LAYER_ROWS=0);
# 4. GPU decode-attention tests under KILN_ATTN_HEAD_MAJOR=1.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
(cd benchmarks/kernels && timeout 150 python3 proto_fp8_decode.py --engine-only \
  --json $OUT/proto_engine.json > $OUT/proto_engine.log 2>&1)
echo "proto done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="base=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768;hm=KILN_ATTN_HEAD_MAJOR=1 --kv-cache-dtype=fp8 --max-num-batched-tokens=32768;base2=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768;hm2=KILN_ATTN_HEAD_MAJOR=1 --kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout 260 bash benchmarks/run_variants_h200.sh
echo "fp8 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=none TP=1 B1=0 VARIANTS="rows=;allrows=KILN_LAST_LAYER_ROWS=0" timeout 130 bash benchmarks/run_variants_h200.sh
echo "bf16 done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
KILN_ATTN_HEAD_MAJOR=1 timeout $((585 - SECONDS + T0)) python3 -m pytest -q -n 8 tests/gpu/test_kernels_gpu.py \
  tests/gpu/test_fp8_kv_gpu.py -k "decode or attention" > $OUT/gpu_tests_hm.log 2>&1
tail -3 $OUT/gpu_tests_hm.log
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
