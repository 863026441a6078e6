#!/usr/bin/env bash
# Device call 5 (ran in run-b on an H200 at tree 2c60458; at most 300 s): the int4 weight-only ring prototype
# (benchmarks/kernels/proto_ring_int4.py). 1. its GPU check (small chain, 1 .. 2 x SMs programs,
# with and without PDL); 2. the 8B chain's 129 int4 GEMVs (group 128, 4.0 GB with scales)
# through the ring, a launch a phase under PDL, against the engine's int4 GEMV on row-major
# weights and on blocks of 16 rows (its default), in the same run.
#   bash benchmarks/h200-ring/call5.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
P=benchmarks/kernels/proto_ring_int4.py
timeout 90 python3 $P --check-only > $OUT/int4_check.log 2>&1
echo "check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/int4_check.log | tail -8
timeout $((290 - SECONDS + T0)) python3 $P --layers 32 --json $OUT/ring_int4.json > $OUT/ring_int4.log 2>&1
echo "ring int4 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^  " $OUT/ring_int4.log | tail -16
