#!/usr/bin/env bash
# Device call 8 (at most 400 s): the batch-1 ring path chosen by `kiln build`'s decode-step
# tuning. 1. the GPU test of the choice (build, stored choice applied, greedy tokens, nothing
# compiled after start-up); 2. the bf16 8B built with `--quant none` (its step tuning times the
# batch-1 step with and without the ring and stores the faster); 3. `kiln bench latency` batch 1
# 128/256 on that engine against the checkpoint, alternating.
#   bash benchmarks/h200-ring/call8.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-390}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > $OUT/model.log 2>&1 &
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_ring_gemv_gpu.py -k "batch1_ring" \
  > $OUT/gpu_test_batch1_ring.log 2>&1
echo "GPU test rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_test_batch1_ring.log)" | tee -a $OUT/times.log
wait
E=/tmp/e8b-none
timeout $((B - 110 - SECONDS + T0)) python3 -m kiln.cli build $M --output $E --quant none --eval-tokens 0 \
  --overwrite --no-progress > $OUT/build_none.log 2>&1
echo "build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/build_none.log
python3 -c "import json; t=json.load(open('$E/engine.json'))['kernel_tuning']; print(json.dumps({'batch1_gemv': t.get('batch1_gemv'), 'in_situ': t.get('in_situ')}))" \
  > $OUT/tuning_none.json 2>&1; cat $OUT/tuning_none.json | cut -c1-600
for r in 1 2; do
  for v in engine checkpoint; do
    left=$((B - 5 - SECONDS + T0)); [ $left -lt 30 ] && break 2
    [ $v = engine ] && P=$E || P=$M
    timeout $left python3 -m kiln.cli bench latency --model $P --batch-size 1 --input-len 128 --output-len 256 \
      --num-iters 3 --num-iters-warmup 1 --no-progress --json $OUT/latency_${v}_$r.json > $OUT/latency_${v}_$r.log 2>&1
    echo "latency $v round $r rc $? at $((SECONDS - T0)) s: $(grep 'decode' $OUT/latency_${v}_$r.log | tail -1)" | tee -a $OUT/times.log
  done
done
