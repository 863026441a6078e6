#!/usr/bin/env bash
# One device call comparing runtime switches on one engine: builds (or reuses) an engine of the
# Llama-3-8B architecture (random bf16 weights; QUANT none = the checkpoint itself, else
# `kiln build --quant QUANT`; QUANT none with a BUILD_TAG builds a --quant none engine), then runs batch-1 decode (128 in / 256 out) and, with TP=1, the
# 1000 x 128/128 throughput at 1024 sequences, once per variant (BATCH sets the latency batch size). VARIANTS is a ';'-separated list
# of NAME=ENV settings ("base=" for none), e.g. "base=;tc=KILN_TC_GEMV=fp8;both=KILN_TC_GEMV=fp8 KILN_PRODUCER_QUANT=1";
# tokens of the form --flag=value go to the bench commands instead ("kv8=--kv-cache-dtype=fp8").
# BUILD_ARGS adds flags to the build (give such an engine its own BUILD_TAG).
# Every result line goes to $OUT/variants.jsonl (one JSON object per run) and the log to $OUT/variants.log.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K="python3 -m kiln.cli"
LOG="$OUT/variants.log"
QUANT=${QUANT:-fp8}
M=/tmp/llama-3-8b
[ -d $M ] || $K random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1 | tee -a "$LOG"
if [ "$QUANT" = none ] && [ -z "${BUILD_TAG:-}" ]; then  # the checkpoint itself; with a BUILD_TAG a --quant none engine
  E=$M
else
  E=/tmp/e8b-$QUANT${BUILD_TAG:-}
  if [ ! -d "$E" ]; then
    T0=$SECONDS
    env ${BUILD_ENV:-} $K build $M --output $E --quant $QUANT --eval-tokens 256 --calib-samples 32 \
      --max-batch-size 1024 --overwrite --no-progress ${BUILD_ARGS:-} 2>&1 | tail -6 | tee -a "$LOG"
    echo "build $QUANT ${BUILD_ARGS:-} (${BUILD_ENV:-default env}) wall $((SECONDS - T0)) s" | tee -a "$LOG"
  fi
fi
IFS=';' read -ra VS <<< "${VARIANTS:-base=}"
for v in "${VS[@]}"; do
  name=${v%%=*}; envs=""; args=""
  for tok in ${v#*=}; do  # --flag=value tokens go to the bench command, the rest are env settings
    case $tok in --*) args="$args $tok" ;; *) envs="$envs $tok" ;; esac
  done
  echo "== $QUANT $name: ${envs:-(defaults)}${args}" | tee -a "$LOG"
  if [ "${B1:-1}" = 1 ]; then
    env $envs $K bench latency --model $E --batch-size ${BATCH:-1} --input-len 128 --output-len 256 --num-iters 3 \
      --num-iters-warmup 1 --no-progress $args --json /tmp/v.json 2>&1 | tail -3 | tee -a "$LOG"
    python3 -c "import json; d=json.load(open('/tmp/v.json')); d['variant']='$name'; d['env']='$envs'; d['args']='$args'; d['quant']='$QUANT${BUILD_TAG:-}'; d['run']='b${BATCH:-1}'; print(json.dumps(d))" >> "$OUT/variants.jsonl"
  fi
  if [ "${TP:-0}" = 1 ]; then
    env $envs $K bench throughput --model $E --num-prompts 1000 --input-len 128 --output-len 128 \
      --max-num-seqs 1024 --max-num-batched-tokens 8192 --no-progress $args --json /tmp/t.json 2>&1 | tail -2 | tee -a "$LOG"
    python3 -c "import json; d=json.load(open('/tmp/t.json')); d['variant']='$name'; d['env']='$envs'; d['args']='$args'; d['quant']='$QUANT${BUILD_TAG:-}'; d['run']='tp1024'; print(json.dumps(d))" >> "$OUT/variants.jsonl"
  fi
done
