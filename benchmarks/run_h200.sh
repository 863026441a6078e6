#!/usr/bin/env bash
# One device call: GPU tests, then the measurements on the Llama-3-8B architecture (random
# bf16 weights). Logs and JSON go to $OUT (the device tool brings them back).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest ${GPU_TESTS:-tests/gpu tests/sample} -q 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
fi
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda
K="python3 -m kiln.cli --log-level INFO bench"
$K latency --model $M --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress ${BASELINE:-} --json "$OUT/latency_b1_128_256.json" 2>&1 | grep -v Warning | tail -12 | tee "$OUT/latency.log"
$K latency --model $M --batch-size 1 --input-len 2048 --output-len 1 --max-num-batched-tokens 4096 --num-iters 5 --no-progress --json "$OUT/ttft_2048.json" 2>&1 | tail -6 | tee "$OUT/ttft.log"
for S in ${MAX_SEQS:-256}; do
  $K throughput --model $M --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs $S --max-num-batched-tokens ${MAX_TOKENS:-8192} --no-progress --json "$OUT/throughput_1000_128_128_s$S.json" 2>&1 | tail -6 | tee -a "$OUT/throughput.log"
done
