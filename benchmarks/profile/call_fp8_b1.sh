#!/usr/bin/env bash
# Device call (at most 300 s): where the 8B fp8 engine's batch-1 decode step goes now. Writes the
# random Llama-3-8B checkpoint, builds the fp8 engine (run_variants_h200.sh, B1=0), then profiles
# 64 decode steps of one 128/256 request, kernels grouped (profile_engine.py).
#   bash benchmarks/profile/call_fp8_b1.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
QUANT=fp8 B1=0 timeout 200 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "build" $OUT/variants.log | head -2
timeout $((290 - SECONDS + T0)) python3 benchmarks/profile/profile_engine.py --model /tmp/e8b-fp8 \
  --num-prompts 1 --input-len 128 --output-len 256 --skip-steps 64 --steps 64 --top 25 \
  --json $OUT/prof_fp8_b1.json > $OUT/prof_fp8_b1.log 2>&1
echo "profile rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -40 $OUT/prof_fp8_b1.log
