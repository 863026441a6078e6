#!/usr/bin/env bash
# Device call 22 (prepared in the session of 2026-12-06, fortieth; at most B = 480 s), for an
# H200 (on another card it stops at once unless ANY_CARD=1), best right after call18.sh on the
# same warm machine (it reuses /tmp/llama-3-8b): #7's batch-1 bars on this tree. 1. the fp8 8B
# engine built with `--lm-head-quant fp8` (+6% on an H100, no gain on the H200 many trees ago),
# `kiln bench latency` batch 1, 128/256; 2. the int4-wo 8B engine (default build: o_proj's AWQ
# scale folded into v, the step tuning), the same, as time allows.
#   bash benchmarks/h200-ring/call22.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-480}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name" | tee -a $OUT/times.log
case $name in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
QUANT=fp8 BUILD_TAG=-head BUILD_ARGS="--lm-head-quant fp8" VARIANTS="head8=" \
  timeout $((B - 20 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "fp8 head rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
left=$((B - 10 - SECONDS + T0))
[ $left -lt 240 ] && { echo "no int4-wo ($left s left)"; grep -h "build\|decode" $OUT/variants.log | tail -6; exit 0; }
QUANT=int4-wo VARIANTS="int4=" timeout $left bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
echo "int4-wo rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -h "build\|decode" $OUT/variants.log | tail -8
