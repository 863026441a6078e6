#!/usr/bin/env bash
# Device call 3 (prepared in the sessions of 2026-12-06 and 12-07; at most B = 480 s): the kernel
# pack's install modes timed. 1. tests/gpu/test_kernel_cache_gpu.py (all / default / none on a
# tiny engine); 2. the 8B fp8 engine built; 3. its start-up on an empty Triton cache four ways,
# each in its own fresh cache: KILN_ENGINE_KERNELS=0, the default (GPU kernels installed,
# launchers compiled here from their recorded signatures in the background), the default with
# KILN_ENGINE_LAUNCHERS=0 (launchers compiled one by one at first launch) and =all, through
# `kiln bench latency` at batch 1 128/256.
#   bash benchmarks/kernel-pack/call3.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
B=${B:-480}
LOG=$OUT/call3.log
left() { echo $((B - $1 - SECONDS + T0)); }
echo "card: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)" | tee -a $LOG
M=/tmp/llama-3-8b
E=/tmp/e8b-fp8-pack
(python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG) &
WRITER=$!
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernel_cache_gpu.py > $OUT/gpu_test.log 2>&1
echo "gpu test rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_test.log)" | tee -a $LOG
wait $WRITER
T1=$SECONDS
timeout $(left 150) python3 -m kiln.cli build $M --output $E --quant fp8 --eval-tokens 256 \
  --overwrite --no-progress 2>&1 | grep -v Warning | tail -6 >> $LOG
echo "build rc $? wall $((SECONDS - T1)) s, at $((SECONDS - T0)) s" | tee -a $LOG
cp $E/engine.json $OUT/engine_fp8.json 2>/dev/null
lat() {  # lat NAME MODE [LAUNCHERS]: a fresh empty Triton cache each time
  local t; t=$(left 5); [ $t -lt 50 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  local c; c=$(mktemp -d /tmp/tc-$1-XXXX)
  echo "== $1" >> $LOG
  KILN_ENGINE_LAUNCHERS=${3:-1} KILN_ENGINE_KERNELS=$2 TRITON_CACHE_DIR=$c timeout $((t < 120 ? t : 120)) python3 -m kiln.cli bench latency \
    --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 \
    --no-progress --json $OUT/$1.json 2>&1 | grep -v Warning | tail -5 >> $LOG
  echo "$1 at $((SECONDS - T0)) s: $(ls $c | wc -l) cache entries; $(grep -h startup $LOG | tail -1)" | tee -a $LOG
}
lat fresh_kernels 1
lat fresh_kernels_lazy 1 0
lat fresh_all all
lat fresh_none 0
tail -24 $LOG
