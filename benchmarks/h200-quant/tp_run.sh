# Sourced after benchmarks/device_env.sh by the fp8 throughput A/B scripts (ab_fp8_throughput.sh,
# ab_fp8_more.sh): `tp_run TAG DIR ENGINE RESERVE` runs #7's fp8 1000 x 128/128 once with the kiln
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
