#!/usr/bin/env bash
# Session of 2026-12-04 (seventeenth), call 1:
# 1. decode attention with the next tile's keys prefetched into registers (proto_decode_pipe.py),
#    and the engine's kernel at contexts spread over 129..256 (as the 1000 x 128/128 run's steps);
# 2. the fp8 8B engine (fp8 head, fp8 KV), 1000 x 128/128 at 32768-token steps, with the SM clock,
#    power and throttle reasons sampled every 100 ms.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
(cd benchmarks/kernels && timeout 240 python3 proto_decode_pipe.py --json $OUT/pipe.json > $OUT/pipe.log 2>&1)
tail -5 $OUT/pipe.log
echo "pipe done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
QUANT=fp8 TP=1 B1=0 BUILD_TAG=-head BUILD_ARGS="--step-tuning-batch-sizes none --lm-head-quant fp8" \
  VARIANTS="kw=--kv-cache-dtype=fp8 --max-num-batched-tokens=32768" \
  timeout $((560 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh
kill $SMI
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
