#!/usr/bin/env bash
# Device call 4 (at most 150 s; when little device time is left): the int4 chain,
# kiln.kernels.mma_int4 at one variant (after its check on small shapes) and the engine's int4 GEMV.
#   bash benchmarks/h200-mma-int4/call4.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 140 python3 benchmarks/kernels/proto_mma_int4.py --layers 32 --reps 10 --variants "[(4, 4, 4, 1)]" \
  --json $OUT/chain.json > $OUT/chain.log 2>&1
echo "int4 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain.log | tail -14
