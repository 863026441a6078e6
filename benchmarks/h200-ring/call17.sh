#!/usr/bin/env bash
# Device call 17 (at most B = 540 s, any card): KILN_PDL_PREWAIT on the quantized 8B engines
# (their norms quantize in the same kernel, which now loads its weight before the wait; the
# decode attention reads the step's inputs before it). Builds the fp8 then the int4-wo engine
# (run_variants_h200.sh's builds), then batch 1 128/256 with and without, ab_latency,
# 2 rounds alternating, each engine.
#   bash benchmarks/h200-ring/call17.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-540}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
for Q in ${QUANTS:-fp8 int4-wo}; do
  left=$((B - SECONDS + T0)); [ $left -lt 120 ] && break
  QUANT=$Q B1=0 timeout $left bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "$Q engine rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  left=$((B - 5 - SECONDS + T0)); [ $left -lt 60 ] && break
  timeout $left python3 benchmarks/ab_latency.py --model /tmp/e8b-$Q --rounds 2 \
    --variants "pre0=KILN_PDL_PREWAIT=0;pre=" --json $OUT/ab_prewait_$Q.json > $OUT/ab_prewait_$Q.log 2>&1
  echo "$Q ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -3 $OUT/ab_prewait_$Q.log
done
grep -h "build\|chose\|batch1" $OUT/variants.log 2>/dev/null | head -8
