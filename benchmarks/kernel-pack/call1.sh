#!/usr/bin/env bash
# Device call (session of 2026-12-06, forty-second): engines that carry their compiled kernels.
# 1. the GPU test of the pack (tests/gpu/test_kernel_cache_gpu.py) and the GPU tests that build
#    engines (they now run the pack stage); 2. the 8B fp8 engine built with the pack (build time,
#    pack size); 3. its start-up on an empty Triton cache (a machine that never ran it), without
#    the pack (KILN_ENGINE_KERNELS=0) and with it, then with it again on another empty cache,
#    each through `kiln bench latency` at batch 1 128/256 (start-up seconds and decode tok/s).
#   bash benchmarks/kernel-pack/call1.sh     (OUT set by the device tool; at most B = 570 s)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-570}
LOG=$OUT/call1.log
left() { echo $((B - $1 - SECONDS + T0)); }
echo "card: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)" | tee -a $LOG
git log --oneline -1 >> $LOG 2>/dev/null
M=/tmp/llama-3-8b
E=/tmp/e8b-fp8-pack
(python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG) &
WRITER=$!
timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 -rs tests/gpu/test_kernel_cache_gpu.py \
  tests/gpu/test_engine_gpu.py tests/gpu/test_quant_gpu.py::test_build_time_tuning_seeds_the_autotuners \
  > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_tests.log)" | tee -a $LOG
wait $WRITER
echo "model ready at $((SECONDS - T0)) s" | tee -a $LOG
T1=$SECONDS
timeout $(left 200) python3 -m kiln.cli build $M --output $E --quant fp8 --eval-tokens 256 \
  --overwrite --no-progress 2>&1 | grep -v Warning | tail -8 >> $LOG
echo "build rc $? wall $((SECONDS - T1)) s, at $((SECONDS - T0)) s" | tee -a $LOG
ls -la $E >> $LOG
python3 -c "import json,sys; d=json.load(open('$E/engine.json')); print(json.dumps(d.get('kernel_cache')))" >> $LOG
cp $E/engine.json $OUT/engine_fp8.json 2>/dev/null
lat() {  # lat NAME [ENV...]: a fresh empty Triton cache each time
  local t; t=$(left 5); [ $t -lt 50 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  local c; c=$(mktemp -d /tmp/tc-$1-XXXX)
  echo "== $1" >> $LOG
  env TRITON_CACHE_DIR=$c "${@:2}" timeout $((t < 150 ? t : 150)) python3 -m kiln.cli bench latency --model $E \
    --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress \
    --json $OUT/$1.json 2>&1 | grep -v Warning | tail -5 >> $LOG
  echo "$1 at $((SECONDS - T0)) s: $(ls $c | wc -l) cache entries; $(grep -h startup $LOG | tail -1)" | tee -a $LOG
}
lat fresh_nopack KILN_ENGINE_KERNELS=0
lat fresh_pack
lat fresh_pack2
cat $LOG | tail -30
