#!/usr/bin/env bash
# Device call 3 (at most 570 s; after call 2, on its warm machine): call 2 with fp8 W8A8 layers
# (fp8 codes, per-channel scales; the LM head bf16). The whole batch-1 decode step as one
# persistent launch (proto_persistent_step.py), against the same kernel launched once per phase.
# 1. the small model's check on the GPU (P = 1, 3, 7 and every SM; barriers, atomics, combine);
# 2. the 8B step at 256 and 1024 tokens of context, every variant, both modes.
# Compare with the engine's fp8 8B decode step at batch 1: 2.82 ms (355 tok/s); bar 470 tok/s.
#   bash benchmarks/h200-persistent/call3.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
P=benchmarks/kernels/proto_persistent_step.py
timeout 200 python3 $P --check-only --weights fp8 > $OUT/step_check_fp8.log 2>&1
echo "step check fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -c " ok$" $OUT/step_check_fp8.log; grep -v " ok$" $OUT/step_check_fp8.log | tail -5
timeout $((570 - SECONDS + T0)) python3 $P --weights fp8 --pos 256,1024 \
  --json $OUT/step_8b_fp8.json > $OUT/step_8b_fp8.log 2>&1
echo "step 8b fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/step_8b_fp8.log
