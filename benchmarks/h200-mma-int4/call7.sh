#!/usr/bin/env bash
# Device call 7 (prepared; at most 580 s; after call6.sh shows kiln.kernels.mma_direct correct and
# faster than tc_gemv in the chain): the 8B at batch 1 128/256 through benchmarks/ab_latency.py,
# one process per model, variants alternating. fp8 engine (`kiln build --quant fp8`, under 3 min):
# default, KILN_MMA_DIRECT=fp8 (the fp8 layers; also with KILN_MMA_DIRECT_CVT=1, the written-out
# conversions) and =1 (the bf16 LM head too); then the bf16
# checkpoint: default against KILN_MMA_DIRECT=float. Each model is loaded with the flag on, so
# that its layers keep the second copy; each variant sets the flag at its capture.
#   bash benchmarks/h200-mma-int4/call7.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
QUANT=fp8 B1=0 timeout 300 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "build|wall" $OUT/variants.log | head -4
if [ -d /tmp/e8b-fp8 ]; then
  KILN_MMA_DIRECT=1 timeout $((420 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model /tmp/e8b-fp8 \
    --variants "base=KILN_MMA_DIRECT=0;fp8=KILN_MMA_DIRECT=fp8;cvt=KILN_MMA_DIRECT=fp8 KILN_MMA_DIRECT_CVT=1;all=KILN_MMA_DIRECT=1" \
    --rounds 2 \
    --json $OUT/ab_fp8.json > $OUT/ab_fp8.log 2>&1
  echo "ab_latency fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -5 $OUT/ab_fp8.log
fi
KILN_MMA_DIRECT=1 timeout $((575 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model /tmp/llama-3-8b \
  --variants "base=KILN_MMA_DIRECT=0;mma=KILN_MMA_DIRECT=float" --rounds 2 --json $OUT/ab_bf16.json \
  > $OUT/ab_bf16.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -4 $OUT/ab_bf16.log
