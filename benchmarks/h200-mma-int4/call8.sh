#!/usr/bin/env bash
# Device call 8 (at most B, default 240 s; for a session with little device time left): the
# shortest useful form of call 6. The 8B's 129 fp8 GEMVs through kiln.kernels.mma_direct at two
# variants (each checked first) against tc_gemv; the int4 ones through kiln.kernels.mma_int4 at
# one variant (then the engine's int4 GEMV if time is left); then the GPU tests of the two
# kernels alone (not the engine tests).
#   B=240 bash benchmarks/h200-mma-int4/call8.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-240}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout $((B * 40 / 100)) python3 benchmarks/kernels/proto_mma_direct.py --kind fp8 --layers 32 --reps 10 \
  --variants "[(2, 4, 4, 1), (2, 4, 4, 1, 1)]" --json $OUT/chain_fp8.json > $OUT/chain_fp8.log 2>&1
echo "fp8 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain_fp8.log | tail -6
timeout $((B * 30 / 100)) python3 benchmarks/kernels/proto_mma_int4.py --layers 32 --reps 10 \
  --variants "[(4, 4, 4, 1)]" --json $OUT/chain.json > $OUT/chain.log 2>&1
echo "int4 chain rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -v " ok$" $OUT/chain.log | tail -6
timeout $((B - 5 - SECONDS + T0)) python3 -m pytest -q -n 8 -p no:cacheprovider -k "not engine" \
  tests/gpu/test_mma_direct_gpu.py tests/gpu/test_mma_int4_gpu.py > $OUT/gpu_tests.log 2>&1
echo "GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR|Error" $OUT/gpu_tests.log | sed 's/ - .*//' | sort -u | head -12; tail -1 $OUT/gpu_tests.log
