#!/usr/bin/env bash
# Device call 11 (at most B = 560 s): the int4 ring GEMV with tensor-core products
# (kiln.kernels.ring_int4). 1. its GPU tests (reference on the 8B's shapes, bias, refusals, a
# graph with PDL, an int4-wo engine's greedy tokens with and without it); 2. the 8B's 129 int4
# GEMVs, ring against the engine's kernel, alternating, and each shape alone
# (benchmarks/kernels/bench_ring_int4.py); 3. if both pass and time is left: the int4-wo 8B
# engine built (its step tuning now times the ring path with the int4 ring in it), then batch 1
# 128/256 with KILN_RING_INT4=0 against =1 (ab_latency.py, one process, alternating).
#   bash benchmarks/h200-ring/call11.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-560}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 200 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_ring_int4_gpu.py \
  > $OUT/gpu_test_ring_int4.log 2>&1
T=$?
echo "GPU tests rc $T at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_test_ring_int4.log)" | tee -a $OUT/times.log
grep -E "^FAILED|^ERROR" $OUT/gpu_test_ring_int4.log | head
timeout 150 python3 benchmarks/kernels/bench_ring_int4.py --rounds 2 --per-shape --json $OUT/bench_ring_int4.json \
  > $OUT/bench_ring_int4.log 2>&1
R=$?
echo "bench rc $R at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "WRONG|wrong|round|copy|us \(" $OUT/bench_ring_int4.log | head -24
wait
left=$((B - SECONDS + T0))
if [ $R != 0 ] || [ $left -lt 330 ]; then echo "no engine run ($left s left)"; exit 0; fi
E=/tmp/e8b-int4-wo
timeout $((left - 120)) python3 -m kiln.cli build $M --output $E --quant int4-wo --eval-tokens 0 \
  --calib-samples 32 --max-batch-size 1024 --overwrite --no-progress > $OUT/build_int4.log 2>&1
echo "build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -5 $OUT/build_int4.log
timeout $((B - 5 - SECONDS + T0)) python3 benchmarks/ab_latency.py --model $E \
  --variants "off=KILN_RING_INT4=0;on=KILN_RING_INT4=1" --rounds 2 --json $OUT/ab_ring_int4.json \
  > $OUT/ab_ring_int4.log 2>&1
echo "ab_latency rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -5 $OUT/ab_ring_int4.log
