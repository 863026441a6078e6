#!/usr/bin/env bash
# Device call 7 (prepared, not yet run; only if call6.sh shows the ring with the small kernels
# early, `fusedS` or `e4S`, beating `tc` on the H200; at most 560 s, right after call6.sh on the
# same machine, which holds /tmp/llama-3-8b). Before the ring can be the batch-1 default:
# 1. the whole GPU suite (213 s with -n 8 in run-d) with it on (KILN_RING_GEMV=$RING, KILN_PDL_TRIGGER=early); 2. the
# bar's own command, `kiln bench latency` bf16 8B batch 1 128/256, with and without it,
# alternating, twice each.
#   RING=fused bash benchmarks/h200-ring/call7.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
RING=${RING:-fused}
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
KILN_RING_GEMV=$RING KILN_PDL_TRIGGER=early timeout 330 python3 -m pytest -v -n 8 -p no:cacheprovider tests/gpu tests/sample \
  > $OUT/gpu_suite_ring.log 2>&1
echo "GPU suite (KILN_RING_GEMV=$RING, small kernels early) rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_suite_ring.log | sed 's/ - .*//' | sort -u | head -20
tail -1 $OUT/gpu_suite_ring.log
wait
for r in 1 2; do
  for v in base ring; do
    if [ $v = ring ]; then E="KILN_RING_GEMV=$RING KILN_PDL_TRIGGER=early"; else E=""; fi
    left=$((550 - SECONDS + T0)); [ $left -lt 60 ] && break 2
    env $E timeout $left python3 -m kiln.cli bench latency --model $M --batch-size 1 --input-len 128 \
      --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json $OUT/latency_${v}_$r.json \
      > $OUT/latency_${v}_$r.log 2>&1
    echo "latency $v round $r rc $? at $((SECONDS - T0)) s: $(grep -i 'decode\|tok/s' $OUT/latency_${v}_$r.log | tail -2 | tr '\n' ' ')" | tee -a $OUT/times.log
  done
done
