#!/usr/bin/env bash
# Session of 2026-12-04 (sixteenth), call 3:
# 1. decode attention prototypes with the keys as the wide operand, widened to float16 (mma.sync
#    or wgmma, no e4m3 dots), beside the engine's kernel at 1000 x 192 / 128 / 256;
# 2. a profile of the best fp8 configuration on this tree (fp8 head, fp8 KV cache, 32768-token
#    prefill steps, the last layer on the sampled rows only).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
(cd benchmarks/kernels && timeout 150 python3 proto_fp8_decode.py --prototype-only --swap-only \
  --json $OUT/proto_swap16.json > $OUT/proto_swap16.log 2>&1)
echo "proto done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
M=/tmp/llama-3-8b; E=/tmp/e8b-fp8-head
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
[ -d $E ] || python3 -m kiln.cli build $M --output $E --quant fp8 --eval-tokens 256 --calib-samples 32 \
  --max-batch-size 1024 --overwrite --no-progress --step-tuning-batch-sizes none --lm-head-quant fp8 2>&1 | tail -2
echo "build done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout $((580 - SECONDS + T0)) python3 benchmarks/profile/profile_engine.py --model $E --num-prompts 1000 \
  --input-len 128 --output-len 128 --max-num-seqs 1024 --max-num-batched-tokens 32768 \
  --kv-cache-dtype fp8 --top 30 --json $OUT/profile_fp8_best.json > $OUT/profile_fp8_best.txt 2>&1
tail -45 $OUT/profile_fp8_best.txt
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
