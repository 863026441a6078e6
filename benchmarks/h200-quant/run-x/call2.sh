#!/usr/bin/env bash
# Call 2: the L2 prefetch launched in the model's stream (KILN_L2_PREFETCH_STREAM=main) against
# the side stream, bf16 8B batch 1; then kernel profiles of batch-1 decode (base, side-stream
# o_proj prefetch, in-stream o_proj prefetch).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
timeout 100 python3 -m pytest -q -n 4 tests/gpu/test_l2_prefetch_gpu.py > $OUT/gpu_l2.log 2>&1
tail -3 $OUT/gpu_l2.log
echo "tests done at $((SECONDS - T0)) s" | tee -a $OUT/times.log
M="KILN_L2_PREFETCH_STREAM=main"
QUANT=none TP=0 B1=1 VARIANTS="base=;mo=$M KILN_L2_PREFETCH=34,0,0,0;mall=$M KILN_L2_PREFETCH=34,8,6,8;mall3=$M KILN_L2_PREFETCH=34,8,6,8 KILN_L2_PREFETCH_MODE=3;so=KILN_L2_PREFETCH=34,0,0,0;base2=" \
  timeout $((400 - SECONDS + T0)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
cat $OUT/variants.jsonl | python3 -c "import sys,json; [print(d['variant'], d['run'], d.get('decode_tokens_per_s'), d.get('kernel_compiles_after_startup')) for d in map(json.loads, sys.stdin)]"
P="python3 benchmarks/profile/profile_engine.py --model /tmp/llama-3-8b --num-prompts 1 --max-num-seqs 1 --output-len 160 --skip-steps 20 --steps 128 --top 14"
for v in "base=" "so=KILN_L2_PREFETCH=34,0,0,0" "mo=$M KILN_L2_PREFETCH=34,0,0,0"; do
  [ $((SECONDS - T0)) -gt 530 ] && break
  env ${v#*=} timeout 60 $P --label ${v%%=*} > $OUT/prof_${v%%=*}.txt 2>&1
  grep -E "ms/step|wall|busy|tc_gemv|attention|rotary|rms" $OUT/prof_${v%%=*}.txt | head -12
done
echo "end at $((SECONDS - T0)) s" | tee -a $OUT/times.log
