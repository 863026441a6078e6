# Sourced by device scripts (ab_fp8_throughput.sh, bf16_kv_ab.sh, next_h200.sh): OUT made an
# absolute path (the scripts cd into other trees), PYTHONUNBUFFERED, the start time T0,
# `left N` (seconds of the budget B left, keeping N in reserve), the card's name in `card`,
# `h200_only` (stops the script unless the card is an H200 or ANY_CARD=1) and `start_log`.
OUT=$(cd "${OUT:-/tmp/out}" 2>/dev/null && pwd || { mkdir -p /tmp/out; echo /tmp/out; })
export PYTHONUNBUFFERED=1 OUT
T0=$SECONDS
left() { echo $((B - $1 - SECONDS + T0)); }
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
h200_only() {
  case $card in *H200*) ;; *) [ "${ANY_CARD:-0}" = 1 ] || { echo "not an H200: stopping"; exit 0; } ;; esac
}
# `start_log NAME`: LOG=$OUT/NAME, begun with the card's name, memory and power limit.
start_log() {
  LOG=$OUT/$1
  echo "card: $(nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | head -1)" | tee $LOG
}
