#!/usr/bin/env bash
# Device call 6 (at most B, default 570 s): the register-direct tensor-core GEMVs, fp8 first (the
# largest gap: the #7 fp8 batch-1 bar). 1. the 8B's 129 fp8 GEMVs, kiln.kernels.mma_direct at
# its variants (each checked first) against the engine's tc_gemv (both on fp8 codes
# quantized beforehand; proto_mma_direct.py); 2. the same for int4 (proto_mma_int4.py, kiln.kernels.mma_int4);
# 3. both kernels' GPU tests; 4. bf16 if a minute is left. B=420 still gives each step
# about 2 minutes.
#   B=570 bash benchmarks/h200-mma-int4/call6.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-570}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
# a short call (B < 450) times 3 variants of each kernel
FEW=""; [ $B -lt 450 ] && FEW=1
timeout $((B * 28 / 100)) python3 benchmarks/kernels/proto_mma_direct.py --kind fp8 --layers 32 --reps 10 \
  ${FEW:+--variants "[(2, 4, 4, 1), (2, 4, 4, 1, 1), (4, 4, 4, 1)]"} --json $OUT/chain_fp8.json > $OUT/chain_fp8.log 2>&1
echo "fp8 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain_fp8.log | tail -10
timeout $((B * 28 / 100)) python3 benchmarks/kernels/proto_mma_int4.py --layers 32 --reps 10 \
  ${FEW:+--variants "[(4, 4, 4, 1), (2, 4, 8, 1), (4, 8, 2, 1)]"} --json $OUT/chain.json \
  > $OUT/chain.log 2>&1
echo "int4 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain.log | tail -10
timeout $((B * 95 / 100 - SECONDS + T0)) python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu/test_mma_direct_gpu.py \
  tests/gpu/test_mma_int4_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR|Error" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -12; tail -1 $OUT/gpu_tests.log
[ $((B - SECONDS + T0)) -lt 60 ] && exit 0
timeout $((B - 5 - SECONDS + T0)) python3 benchmarks/kernels/proto_mma_direct.py --kind bf16 --layers 32 --reps 10 \
  --json $OUT/chain_bf16.json > $OUT/chain_bf16.log 2>&1
echo "bf16 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain_bf16.log | tail -8
