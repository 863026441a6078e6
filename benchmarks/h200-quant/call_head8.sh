#!/usr/bin/env bash
# Device call (at most 400 s): the fp8 8B engine at batch 1 128/256 with the bf16 LM head (the
# default) against `--lm-head-quant fp8`, two rounds alternating, one machine. On the H100 of
# 2026-12-06 the fp8 head took the step from 3.573 to 3.378 ms (profile, ../profile/README.md);
# on the H200 an older tree had shown no gain (334.5 against 337.8 tok/s, call 5 above).
#   bash benchmarks/h200-quant/call_head8.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
QUANT=fp8 B1=0 timeout 150 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
QUANT=fp8 B1=0 BUILD_TAG=-head8 BUILD_ARGS="--lm-head-quant fp8" timeout 150 bash benchmarks/run_variants_h200.sh \
  > /dev/null 2>&1
echo "builds at $((SECONDS - T0)) s" | tee -a $OUT/times.log; grep build $OUT/variants.log
for r in 1 2; do
  for TAG in "" -head8; do
    [ $((SECONDS - T0)) -gt 360 ] && break 2
    QUANT=fp8 BUILD_TAG=$TAG VARIANTS="r$r$TAG=" timeout $((395 - SECONDS + T0)) \
      bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  done
done
grep -E "^==|decode|TPOT" $OUT/variants.log | tail -12
