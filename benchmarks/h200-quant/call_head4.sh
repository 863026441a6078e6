#!/usr/bin/env bash
# Device call (at most B = 580 s): the int4-wo 8B engine at batch 1 128/256 with its LM head in
# bf16 (the default: cuBLAS, 1.05 GB, about 0.35 ms of a 2.66 ms step on an H100), in int4
# (`--lm-head-quant int4-wo`: 0.28 GB through the engine's int4 GEMV, which streamed it at 88% of
# copy in bench_ring_int4.py's chain) and, as time allows, in fp8 (`--lm-head-quant fp8`: 0.53 GB
# through the tensor-core GEMV), two rounds alternating, one machine. HEADS picks the heads
# (default "none int4-wo fp8"). The accuracy cost of each head is the build's report on real
# weights; these random weights only time it (--eval-tokens 0). On the H200 (run-y, an older
# tree) the int4 head gave 401.9 against 386.2 tok/s with the bf16 head, on different machines;
# this is the same-machine A/B.
# BUILD_EXTRA adds build flags (e.g. "--step-tuning-batch-sizes none --no-kernel-cache", as
# bars_h200.sh builds).
#   bash benchmarks/h200-quant/call_head4.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-580}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1
built=""
for H in ${HEADS:-none int4-wo fp8}; do
  E=/tmp/e8b-int4-wo-head-$H
  if [ ! -d $E ]; then
    left=$((B - SECONDS + T0)); [ $left -lt 220 ] && { echo "no build of head $H ($left s left)"; break; }
    timeout $((left - 90)) python3 -m kiln.cli build $M --output $E --quant int4-wo --lm-head-quant $H \
      --eval-tokens 0 --calib-samples 32 --max-batch-size 1024 --overwrite --no-progress ${BUILD_EXTRA:-} > $OUT/build_head_$H.log 2>&1
    echo "build head $H rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
    tail -3 $OUT/build_head_$H.log
  fi
  [ -f $E/engine.json ] && built="$built $H"
done
for r in 1 2; do
  for H in $built; do
    left=$((B - 5 - SECONDS + T0)); [ $left -lt 35 ] && break 2
    timeout $left python3 -m kiln.cli bench latency --model /tmp/e8b-int4-wo-head-$H --batch-size 1 --input-len 128 \
      --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json $OUT/latency_head_${H}_$r.json \
      > $OUT/latency_head_${H}_$r.log 2>&1
    echo "head $H round $r rc $? at $((SECONDS - T0)) s: $(grep decode $OUT/latency_head_${H}_$r.log | tail -1)" \
      | tee -a $OUT/times.log
  done
done
