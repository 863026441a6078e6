#!/usr/bin/env bash
# One device call: the 1000 x 128/128 workload split into its prefill and decode phases, with the
# kernels of each (benchmarks/profile/phases.py), for the bf16 8B architecture and its fp8 engine
# (bf16 and fp8 KV cache).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
M=/tmp/llama-3-8b
K="python3 -m kiln.cli"
P="python3 benchmarks/profile/phases.py --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs ${MAX_SEQS:-1024} --shapes"
[ -d $M ] || $K random-model --preset llama-3-8b --out $M --device cuda
timeout 200 $P --model $M --label bf16 --json "$OUT/phases_bf16.json" 2>&1 | grep -v USDT | tee -a "$OUT/run.log"
if [ "${SKIP_FP8:-0}" != 1 ]; then
  $K build $M --output /tmp/e8b-fp8 --quant fp8 --eval-tokens 256 --calib-samples 32 --overwrite --no-progress 2>&1 | tail -2 | tee -a "$OUT/run.log"
  for KV in ${FP8_KV:-auto fp8}; do
    timeout 200 $P --model /tmp/e8b-fp8 --kv-cache-dtype $KV --label fp8-kv$KV --json "$OUT/phases_fp8_kv$KV.json" 2>&1 | grep -v USDT | tee -a "$OUT/run.log"
  done
fi
