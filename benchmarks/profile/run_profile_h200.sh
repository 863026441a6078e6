#!/usr/bin/env bash
# One device call: kernel-time profiles of the 8B architecture (bf16, fp8, int4-wo) at batch 1 and
# of the bf16 1000 x 128/128 workload, after re-running a list of GPU tests with tracebacks.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -n "${TESTS_FILE:-}" ]; then
  timeout ${TEST_TIMEOUT:-150} python3 -m pytest $(cat "$TESTS_FILE") -q -rfE --tb=short -p no:cacheprovider > "$OUT/tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -20 | tee -a "$OUT/run.log"
fi
M=/tmp/llama-3-8b
K="python3 -m kiln.cli"
P="python3 benchmarks/profile/profile_engine.py"
[ -d $M ] || $K random-model --preset llama-3-8b --out $M --device cuda
timeout 90 $P --model $M --label bf16-b1 --num-prompts 1 --output-len 96 --skip-steps 16 --steps 64 --json "$OUT/prof_bf16_b1.json" 2>&1 | grep -v USDT | tail -30 | tee -a "$OUT/run.log"
timeout 120 $P --model $M --label bf16-1000x128x128-s512 --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 512 --json "$OUT/prof_bf16_tp.json" 2>&1 | grep -v USDT | tail -30 | tee -a "$OUT/run.log"
for Q in ${SCHEMES:-fp8 int4-wo}; do
  [ -d /tmp/e8b-$Q ] || $K build $M --output /tmp/e8b-$Q --quant $Q --eval-tokens 256 --calib-samples 32 --overwrite --no-progress 2>&1 | tail -2
  timeout 120 $P --model /tmp/e8b-$Q --label $Q-b1 --num-prompts 1 --output-len 96 --skip-steps 16 --steps 64 --json "$OUT/prof_${Q}_b1.json" 2>&1 | grep -v USDT | tail -30 | tee -a "$OUT/run.log"
done
