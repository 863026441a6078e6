#!/usr/bin/env bash
# Device call (prepared in the session of 2026-12-06, thirty-ninth; at most about 300 s, any
# card): why the 1000 x 128/128 decode GEMMs run about 19% slower in the engine than alone
# (benchmarks/profile/gemm_gap.py: the workload timed, decode steps profiled, then the same
# GEMM shapes in bursts and as a sustained chain, with the SM clock and power sampled).
#   bash benchmarks/profile/call_gemm_gap.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
echo "model ready at $((SECONDS - T0)) s" | tee -a $OUT/times.log
timeout 240 python3 benchmarks/profile/gemm_gap.py --model $M --json $OUT/gemm_gap.json > $OUT/gemm_gap.log 2>&1
echo "gemm_gap rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^--" $OUT/gemm_gap.log | tail -30
