#!/usr/bin/env bash
# One device call: GEMM time against the row count (bf16 and fp8; SKIP_ROWS=1 skips it), the
# 1000 x 128/128 throughput with the default decode-graph buckets and (SKIP_OLD=1 skips it) with
# every-16 buckets given by --cuda-graph-sizes, batch 1, the fp8 engine built for 1024 sequences
# (bf16 and fp8 KV), then GPU tests (GPU_TESTS, PYTEST_ARGS).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/run.log"
M=/tmp/llama-3-8b
K="python3 -m kiln.cli --log-level INFO"
TP="bench throughput --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 8192 --no-progress"
[ -d $M ] || $K random-model --preset llama-3-8b --out $M --device cuda
if [ "${SKIP_ROWS:-0}" != 1 ]; then
  timeout 150 python3 benchmarks/kernels/bench_gemm_rows.py --rows ${ROWS:-256:1024:16} --json "$OUT/gemm_rows.json" 2>&1 | tail -110 > "$OUT/gemm_rows.log"
  grep "larger bucket" "$OUT/gemm_rows.log" | tee -a "$LOG"
fi
OLD=$(python3 -c "print(' '.join(map(str, [1, 2, 4, 8] + list(range(16, 1025, 16)))))")
echo "== bf16 default buckets" | tee -a "$LOG"
timeout 120 $K $TP --model $M --json "$OUT/tp_bf16_new.json" 2>&1 | grep -E "captured|throughput:|startup" | tee -a "$LOG"
if [ "${SKIP_OLD:-0}" != 1 ]; then
  echo "== bf16 every-16 buckets" | tee -a "$LOG"
  timeout 120 $K $TP --model $M --cuda-graph-sizes $OLD --json "$OUT/tp_bf16_old.json" 2>&1 | grep -E "throughput:|startup" | tee -a "$LOG"
fi
timeout 120 $K bench latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/b1.json" 2>&1 | grep -E "tok/s|TPOT|decode" | tail -4 | tee -a "$LOG"
if [ "${SKIP_FP8:-0}" != 1 ]; then
  $K build $M --output /tmp/e8b-fp8 --quant fp8 --eval-tokens 256 --calib-samples 32 --max-batch-size 1024 --overwrite --no-progress 2>&1 | grep -E "built|top-1" | tee -a "$LOG"
  for KV in auto fp8; do
    echo "== fp8 engine, kv $KV" | tee -a "$LOG"
    timeout 150 $K $TP --model /tmp/e8b-fp8 --kv-cache-dtype $KV --json "$OUT/tp_fp8_kv$KV.json" 2>&1 | grep -E "throughput:|startup|max_num_seqs" | tee -a "$LOG"
  done
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-200} python3 -m pytest ${GPU_TESTS:-tests/gpu/test_engine_gpu.py} -q -rfE --tb=short -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/gpu_tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -15 | tee -a "$LOG"
fi
