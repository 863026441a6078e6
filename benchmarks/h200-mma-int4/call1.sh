#!/usr/bin/env bash
# Device call 1 (at most 300 s): the register-direct tensor-core int4 GEMV prototype
# (benchmarks/kernels/proto_mma_int4.py): GPU check on small shapes, then the 8B's 129 int4 GEMVs
# against the engine's int4 GEMV (blocks of 16 rows, autotuned, PDL), one process.
#   bash benchmarks/h200-mma-int4/call1.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 120 python3 benchmarks/kernels/proto_mma_int4.py --check-only > $OUT/check.log 2>&1
echo "check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -c " ok" $OUT/check.log; grep -v " ok$" $OUT/check.log | tail -15
timeout $((290 - SECONDS + T0)) python3 benchmarks/kernels/proto_mma_int4.py --layers 32 --json $OUT/chain.json > $OUT/chain.log 2>&1
echo "chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v "^check" $OUT/chain.log | tail -25
