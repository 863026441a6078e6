#!/usr/bin/env bash
# One device call: GPU tests, then the measurements on the Llama-3-8B architecture (random
# bf16 weights). The log goes to $OUT/run.log (the full GPU-test log beside it) and each measurement
# to its own JSON: at most 8 files, as the device tool brings back.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/run.log"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/run.log"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${GPU_TESTS:-tests/gpu tests/sample} ${PYTEST_ARGS:-} -q -rfE --tb=short 2>&1 > "$OUT/gpu_tests_full.log"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests_full.log" | tail -25 | tee -a "$OUT/run.log"
fi
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda
K="python3 -m kiln.cli --log-level INFO bench"
timeout 300 $K latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress ${BASELINE:-} --json "$OUT/latency_b1_128_256.json" 2>&1 | grep -v Warning | tail -12 | tee -a "$OUT/run.log"
if [ ! -s "$OUT/latency_b1_128_256.json" ]; then  # a failure of the async step loop must not hide the rest
  echo "== latency failed; again with --no-async-scheduling" | tee -a "$OUT/run.log"
  timeout 120 $K latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --no-async-scheduling --json "$OUT/latency_b1_128_256_sync.json" 2>&1 | tail -30 | tee -a "$OUT/run.log"
fi
if [ "${TRITON_GEMV_COMPARE:-0}" = 1 ]; then  # decode GEMVs on the Triton kernel instead of cuBLAS
  echo "== KILN_TRITON_GEMV=1" | tee -a "$OUT/run.log"
  KILN_TRITON_GEMV=1 timeout 200 $K latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_b1_128_256_triton_gemv.json" 2>&1 | grep -v Warning | tail -6 | tee -a "$OUT/run.log"
fi
timeout 120 $K latency --model $M --batch-size 1 --input-len 2048 --output-len 1 --max-num-batched-tokens 4096 --num-iters 5 --no-progress --json "$OUT/ttft_2048.json" 2>&1 | tail -6 | tee -a "$OUT/run.log"
for S in ${MAX_SEQS:-256}; do
  timeout 150 $K throughput --model $M --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs $S --max-num-batched-tokens ${MAX_TOKENS:-8192} --no-progress --json "$OUT/throughput_1000_128_128_s$S.json" ${THROUGHPUT_ARGS:-} 2>&1 | tail -6 | tee -a "$OUT/run.log"
done
if [ "${SYNC_COMPARE:-0}" = 1 ]; then  # the same workload with the step loop synchronous, for the ablation
  timeout 150 $K throughput --model $M --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs $S --max-num-batched-tokens ${MAX_TOKENS:-8192} --no-progress --no-async-scheduling --json "$OUT/throughput_1000_128_128_s${S}_sync.json" 2>&1 | tail -6 | tee -a "$OUT/run.log"
fi
