#!/usr/bin/env bash
# The session's second device call (2026-12-07, forty-eighth), after call_first.sh on the same
# machine: the GPU tests at this tree (#5 asks for them on the H200), then, as time allows, the
# bf16 checkpoint's 1000 x 128/128 with an fp8 KV cache (not #5's setting, which keeps the cache
# in bf16; it gained 5.8% on an H100 and was never run on an H200).
#   B=580 bash benchmarks/h200-quant/call_second.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-580}
LOG=$OUT/call_second.log
echo "card: $(nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | head -1)" | tee $LOG
timeout $(left 110) python3 -m pytest -q -p no:cacheprovider -n 8 -rf tests/gpu > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log | tee -a $LOG
echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
t=$(left 5)
[ $t -ge 60 ] && timeout $((t < 110 ? t : 110)) python3 -m kiln.cli bench throughput --model $M --dtype bfloat16 \
  --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype fp8 \
  --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_bf16_kvfp8.json 2>&1 \
  | grep -E "throughput:|GPU during" >> $LOG
echo "bf16 fp8-kv 1000 at $((SECONDS - T0)) s" | tee -a $LOG
cat $LOG
