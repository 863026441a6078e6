#!/usr/bin/env bash
# Device call (at most 590 s): int4-wo 8B at batch 1 128/256 with o_proj's AWQ scale folded into
# the v rows (the default since 2026-12-06) against the same engine built with
# KILN_AWQ_FOLD_O_PROJ=0 (the scale kept as a run-time multiply, 32 launches a step), on one
# machine; the two b1 runs alternate twice.
#   bash benchmarks/h200-quant/call_fold.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
QUANT=int4-wo B1=0 timeout 260 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fold build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
QUANT=int4-wo B1=0 BUILD_TAG=-kept BUILD_ENV=KILN_AWQ_FOLD_O_PROJ=0 timeout $((500 - SECONDS + T0)) \
  bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "kept build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "build|top-1" $OUT/variants.log
for r in 1 2; do
  for TAG in "" -kept; do
    [ -d /tmp/e8b-int4-wo$TAG ] || continue
    [ $((SECONDS - T0)) -gt 555 ] && break 2
    QUANT=int4-wo BUILD_TAG=$TAG VARIANTS="r$r$TAG=" timeout $((585 - SECONDS + T0)) \
      bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
    echo "b1 int4-wo$TAG round $r rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  done
done
grep -E "^==|decode|TPOT" $OUT/variants.log | tail -12
