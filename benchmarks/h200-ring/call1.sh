#!/usr/bin/env bash
# Device call 1 of the ring prototype (at most 480 s): the GPU check of
# benchmarks/kernels/proto_ring_chain.py (small chain, P = 1 .. 2 x SMs), then the 8B bf16
# chain (129 GEMVs, 15.0 GB) with the ring against the engine's launches and run-a's Triton
# persistent kernel, in the same run.
#   bash benchmarks/h200-ring/call1.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee -a $OUT/times.log
P=benchmarks/kernels/proto_ring_chain.py
timeout 90 python3 $P --check-only > $OUT/check.log 2>&1
echo "check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -25 $OUT/check.log
timeout $((${RING_LIMIT:-470} - SECONDS + T0)) python3 $P --layers 32 --json $OUT/ring32.json $EXTRA > $OUT/ring32.log 2>&1
echo "ring32 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/ring32.log | grep -v "^  " | tail -40
