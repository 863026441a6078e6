#!/usr/bin/env bash
# Device call 5 (prepared; at most 570 s; only after call6.sh shows kiln.kernels.mma_int4 correct
# and faster than the engine's int4 GEMV in the chain): the int4-wo 8B engine (random weights,
# `kiln build --quant int4-wo`, about 200 s), batch 1 128/256 through benchmarks/ab_latency.py,
# default against KILN_INT4_MMA=1, alternating; then, as time allows, the same with an int4 LM
# head (`--lm-head-quant int4-wo`), which the kernel then also takes.
#   bash benchmarks/h200-mma-int4/call5.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
for TAG in "" -head4; do
  ARGS=""; [ -n "$TAG" ] && ARGS="--lm-head-quant int4-wo"
  QUANT=int4-wo B1=0 BUILD_TAG=$TAG BUILD_ARGS="$ARGS" timeout $((560 - SECONDS + T0)) \
    bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "int4-wo$TAG build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  [ -d /tmp/e8b-int4-wo$TAG ] || break
  # loaded with the flag on (the layers keep the second copy); each variant sets it at capture
  KILN_INT4_MMA=1 timeout $((565 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model /tmp/e8b-int4-wo$TAG \
    --variants "base=KILN_INT4_MMA=0;mma=KILN_INT4_MMA=1" --rounds 2 --json $OUT/ab_int4$TAG.json \
    > $OUT/ab_int4$TAG.log 2>&1
  echo "ab_latency int4-wo$TAG rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -4 $OUT/ab_int4$TAG.log
  [ $((SECONDS - T0)) -gt 300 ] && break
done
grep -E "build" $OUT/variants.log | head -4
