#!/usr/bin/env bash
# Device call 2 (at most 570 s; can share call 1's warm machine): the whole batch-1 decode step
# of a Llama-3-8B-shaped model (random bf16 weights) as one persistent launch
# (proto_persistent_step.py), against the same kernel launched once per phase (161 launches).
# 1. the small model's check on the GPU (P = 1, 3, 7 and every SM; barriers, atomics, combine);
# 2. the 8B step at 256 and 1024 tokens of context, every variant, both modes.
# Compare with the engine's bf16 8B decode step at batch 1: 4.24-4.33 ms (231-236 tok/s).
#   bash benchmarks/h200-persistent/call2.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
P=benchmarks/kernels/proto_persistent_step.py
timeout 200 python3 $P --check-only --weights bf16 > $OUT/step_check.log 2>&1
echo "step check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -c " ok$" $OUT/step_check.log; grep -v " ok$" $OUT/step_check.log | tail -5
timeout $((570 - SECONDS + T0)) python3 $P --weights bf16 --pos 256,1024 --json $OUT/step_8b.json \
  > $OUT/step_8b.log 2>&1
echo "step 8b rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/step_8b.log
