#!/usr/bin/env bash
# Device call 1 of the persistent-chain prototype (about 200 s on a fresh H200): is one
# persistent launch of the decode step's GEMVs, with a grid barrier a phase, faster than a
# launch a phase (the engine's tc_gemv under PDL, and the same kernel launched per phase)?
# First the small correctness check on the GPU (P = 1, 3, 7 and every SM, barriers included),
# then the 8B chain (32 layers x 4 GEMVs + the LM head, 15.0 GB of bf16) and an 8-layer one.
#   bash benchmarks/h200-persistent/call1.sh     (OUT set by the device tool)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 120 python3 benchmarks/kernels/proto_persistent_chain.py --check-only \
  > $OUT/check.log 2>&1
echo "check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -3 $OUT/check.log
timeout 300 python3 benchmarks/kernels/proto_persistent_chain.py --layers 32 \
  --json $OUT/chain32.json > $OUT/chain32.log 2>&1
echo "chain32 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
cat $OUT/chain32.log
timeout $((570 - SECONDS + T0)) python3 benchmarks/kernels/proto_persistent_chain.py --layers 8 \
  --no-lm-head --json $OUT/chain8.json > $OUT/chain8.log 2>&1
echo "chain8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^(" $OUT/chain8.log
