#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (thirteenth); run in the fourteenth (2026-12-04) on tree a3a5f99 + this line.
# 1. Where the best fp8 1000 x 128/128 configuration (fast accumulation, --lm-head-quant fp8,
#    --kv-cache-dtype fp8; 29,117-29,224 tok/s in run-r) spends its 4.4 s.
# 2. ncu of decode attention at 1000 x 192, bf16 against fp8 cache: why the fp8 kernel's fixed
#    cost per program (about 46 us a layer against 22 for bf16, from run-h's 192/256-key sweep)
#    and its per-tile cost (2.8 TB/s) are what they are (stall reasons, issue slots).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
M=/tmp/llama-3-8b; E=/tmp/e8b-fp8-head
python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
python3 -m kiln.cli build $M --output $E --quant fp8 --lm-head-quant fp8 --eval-tokens 256 --calib-samples 32 \
  --max-batch-size 1024 --step-tuning-batch-sizes none --overwrite --no-progress 2>&1 | tail -2
echo "built at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 200 python3 benchmarks/profile/profile_engine.py --model $E --num-prompts 1000 --input-len 128 \
  --output-len 128 --max-num-seqs 1024 --kv-cache-dtype fp8 --top 30 --json $OUT/prof_fp8_best.json \
  > $OUT/prof_fp8_best.txt 2>&1
echo "profile at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 150 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
  --section LaunchStats --section SchedulerStats --section SourceCounters -k regex:_decode_partition \
  python3 benchmarks/h200-quant/run-s/ncu_decode_attention.py > $OUT/ncu_attn.txt 2>&1
echo "ncu at $((SECONDS - T0)) s" | tee -a $OUT/times.log
if [ $((SECONDS - T0)) -lt 500 ]; then
  timeout 80 python3 -m kiln.cli build kiln/demo/demo-model --output /tmp/demo-fp8 --quant fp8 --step-tuning-batch-sizes none \
    --overwrite --no-progress 2>&1 | grep -E "top-1|built" | tee $OUT/demo_fp8.log
  python3 -c "import json;print(json.load(open('/tmp/demo-fp8/engine.json'))['accuracy'])" 2>&1 | tee -a $OUT/demo_fp8.log
fi
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
