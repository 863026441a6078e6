#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (tenth), NOT yet run (that session's device time ran out).
# Where the fp8 8B engine's
# 1000 x 128/128 run at 1024 sequences spends its GPU time (every step profiled), for the 32k bar.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=/tmp/llama-3-8b; E=/tmp/e8b-fp8
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
T0=$SECONDS
python3 -m kiln.cli build $M --output $E --quant fp8 --eval-tokens 0 --calib-samples 8 --max-batch-size 1024 \
  --step-tuning-batch-sizes none --overwrite --no-progress 2>&1 | tail -2
echo "build wall $((SECONDS - T0)) s"
python3 benchmarks/profile/profile_engine.py --model $E --num-prompts 1000 --input-len 128 --output-len 128 \
  --max-num-seqs 1024 --top 30 --json $OUT/prof_fp8_tp_s1024.json 2>&1 | tail -45 | tee $OUT/prof_fp8_tp_s1024.txt
