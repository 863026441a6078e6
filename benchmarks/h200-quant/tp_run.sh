# Sourced after benchmarks/device_env.sh by the fp8 throughput scripts (ab_fp8_throughput.sh,
# ab_fp8_more.sh, silu_warps_ab.sh, bars_h200.sh): `tp_run TAG DIR ENGINE RESERVE` runs #7's fp8 1000 x 128/128 once with the kiln
# tree at DIR, from DIR (python3 -m puts the working directory ahead of PYTHONPATH), on ENGINE,
# writing $OUT/tp_TAG.json and appending to $LOG; skipped when fewer than 50 s of the budget are
# left after keeping RESERVE seconds; at most 110 s.
tp_run() {
  local tag=$1 dir=$2 engine=$3 t
  t=$(left $4); [ $t -lt 50 ] && { echo "skip $tag ($t s left)" | tee -a $LOG; return; }
  (cd $dir && PYTHONPATH=$dir timeout $((t < 110 ? t : 110)) python3 -m kiln.cli bench throughput --model $engine \
    --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype fp8 \
    --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_$tag.json 2>&1 | grep -E "throughput:|GPU during" >> $LOG)
  echo "$tag at $((SECONDS - T0)) s: $(grep -h 'output tok/s' $LOG | tail -1)" | tee -a $LOG
}
# The 8B checkpoint these scripts use, and the fp8 engine flags of #7's throughput runs (fp8, fp8
# LM head, no step tuning, up to 1024 sequences).
M=/tmp/llama-3-8b
FP8_BUILD="--quant fp8 --lm-head-quant fp8 --step-tuning-batch-sizes none --max-batch-size 1024 --eval-tokens 256 --overwrite --no-progress"
# `fp8_engine LIMIT [ENGINE [FLAGS...]]`: the checkpoint at $M (made once) and this tree's fp8
# engine at ENGINE (default /tmp/e-new), built with $FP8_BUILD and FLAGS (later flags win) in at
# most LIMIT seconds; logs to $LOG.
fp8_engine() {
  local t=$1 e=${2:-/tmp/e-new}; shift; shift $(( $# > 0 ))
  checkpoint
  PYTHONPATH=$PWD timeout $t python3 -m kiln.cli build $M --output $e $FP8_BUILD "$@" 2>&1 | grep -v Warning | tail -2 >> $LOG
  echo "engine at $((SECONDS - T0)) s" | tee -a $LOG
}
# `checkpoint`: the bf16 8B checkpoint at $M, made once.
checkpoint() {
  [ -d $M ] || PYTHONPATH=$PWD python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 >> $LOG
}
# `bf16_tp TAG KV RESERVE`: #5's 1000 x 128/128 on that checkpoint with KV cache dtype KV (auto:
# bf16, the bar's setting), writing $OUT/tp_TAG.json; skipped when fewer than 50 s are left after
# keeping RESERVE seconds; at most 110 s.
bf16_tp() {
  local t; t=$(left $3); [ $t -lt 50 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  PYTHONPATH=$PWD timeout $((t < 110 ? t : 110)) python3 -m kiln.cli bench throughput --model $M --dtype bfloat16 \
    --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs 1024 --kv-cache-dtype $2 \
    --max-num-batched-tokens 32768 --no-progress --json $OUT/tp_$1.json 2>&1 | grep -E "throughput:|GPU during" >> $LOG
  echo "$1 at $((SECONDS - T0)) s: $(grep -h 'output tok/s' $LOG | tail -1)" | tee -a $LOG
}
# `lat TAG MODEL [flags]`: batch 1, 128 in / 256 out (#5's and #7's batch-1 bars), writing
# $OUT/b1_TAG.json and its main lines to $LOG; skipped when fewer than 40 s are left after keeping
# RES (default 5) seconds; at most 90 s.
lat() {
  local tag=$1 model=$2 t; shift 2
  t=$(left ${RES:-5}); [ $t -lt 40 ] && { echo "skip b1 $tag ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 90 ? t : 90)) python3 -m kiln.cli bench latency --model $model "$@" --batch-size 1 \
    --input-len 128 --output-len 256 --no-progress --json $OUT/b1_$tag.json 2>&1 | grep -E "tok/s|TPOT|GB/s" >> $LOG
  echo "b1 $tag at $((SECONDS - T0)) s" | tee -a $LOG
}
