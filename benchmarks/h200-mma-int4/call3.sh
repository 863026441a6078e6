#!/usr/bin/env bash
# Device call 3 (at most B, default 450 s): the register-direct tensor-core GEMVs. 1. int4
# (proto_mma_int4.py: kiln.kernels.mma_int4's variants, checked, then the 8B's 129 int4 GEMVs, and the engine's int4 GEMV);
# 2. the engine's kernel (kiln.kernels.mma_int4) GPU tests; 3. fp8 and bf16 (proto_mma_direct.py): check, then the 129 GEMVs of each against tc_gemv.
#   bash benchmarks/h200-mma-int4/call3.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-450}  # the call's seconds
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
# (the chain checks its variants on small shapes before it times them)
timeout $((B * 3 / 5)) python3 benchmarks/kernels/proto_mma_int4.py --layers 32 --json $OUT/chain.json > $OUT/chain.log 2>&1
echo "int4 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain.log | tail -14
timeout 120 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_mma_int4_gpu.py > $OUT/gpu_tests.log 2>&1
echo "kiln.kernels.mma_int4 GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR|Error" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -12; tail -1 $OUT/gpu_tests.log
timeout 90 python3 benchmarks/kernels/proto_mma_direct.py --check-only > $OUT/check_direct.log 2>&1
echo "direct check rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -c " ok" $OUT/check_direct.log; grep -v " ok$" $OUT/check_direct.log | tail -12
for kind in fp8 bf16; do
  timeout $((B - 10 - SECONDS + T0)) python3 benchmarks/kernels/proto_mma_direct.py --kind $kind --layers 32 \
    --json $OUT/chain_$kind.json > $OUT/chain_$kind.log 2>&1
  echo "$kind chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  grep -v "^check" $OUT/chain_$kind.log | tail -12
done
