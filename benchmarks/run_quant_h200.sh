#!/usr/bin/env bash
# One device call for `kiln build` on the H200: the quantized-matmul GPU tests and kernel benchmark,
# FP8 and INT4 weight-only engines of the Llama-3-8B architecture (random bf16 weights; build time,
# kernel tuning stored in engine.json), their batch-1 decode (FUSED_COMPARE=1: also with the split-K
# reduce as a separate kernel, KILN_QUANT_FUSED_SPLITK=0; PDL_COMPARE=1: also with KILN_PDL=1;
# PRODUCER_COMPARE=1: also with KILN_PRODUCER_QUANT=1, batch 1 and throughput), fp8 1000 x 128/128
# throughput (MAX_SEQS, default 1024), and the FP8 accuracy report of the demo model.
# The log goes to $OUT/run.log and each measurement to its own JSON (at most 8 files come back).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K="python3 -m kiln.cli"
LOG="$OUT/run.log"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/gpu/test_quant_gpu.py ${PYTEST_ARGS:-} -q -rfE --tb=short > "$OUT/quant_gpu_tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/quant_gpu_tests.log" | tail -15 | tee -a "$LOG"
fi
if [ "${KERNEL_BENCH:-0}" = 1 ]; then
  timeout 300 python3 benchmarks/kernels/bench_quant.py --quick --json "$OUT/bench_quant.json" 2>&1 | tail -40 | tee -a "$LOG"
fi
M=/tmp/llama-3-8b
[ -d $M ] || $K random-model --preset llama-3-8b --out $M --device cuda
DEMO=$(python3 -c "import kiln.demo as d; print(d.DEMO_MODEL)")
[ "${SKIP_DEMO:-0}" = 1 ] || $K build "$DEMO" --output /tmp/demo-fp8 --quant fp8 --overwrite --no-progress 2>&1 | tail -3 | tee -a "$LOG"
for Q in ${SCHEMES:-fp8 int4-wo}; do
  E=/tmp/e8b-$Q
  T0=$SECONDS
  $K build $M --output $E --quant $Q --eval-tokens 1024 --calib-samples 32 --max-batch-size ${MAX_BATCH:-1024} --overwrite --no-progress 2>&1 | tail -4 | tee -a "$LOG"
  echo "build $Q wall $((SECONDS - T0)) s" | tee -a "$LOG"
  python3 -c "import json,sys; t=json.load(open('$E/engine.json'))['kernel_tuning']; print('kernel_tuning', t['status'], t.get('seconds'), len(t['results']), 'entries')" | tee -a "$LOG"
  $K bench latency --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_8b_$Q.json" 2>&1 | tail -6 | tee -a "$LOG"
  if [ "${ACT_COMPARE:-0}" = 1 ]; then  # W8A8 GEMVs quantizing their own activations
    echo "== $Q with KILN_QUANT_FUSED_ACT=1" | tee -a "$LOG"
    KILN_QUANT_FUSED_ACT=1 $K bench latency --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_8b_${Q}_fused_act.json" 2>&1 | tail -6 | tee -a "$LOG"
  fi
  if [ "${PDL_COMPARE:-0}" = 1 ]; then  # programmatic dependent launch
    echo "== $Q with KILN_PDL=1" | tee -a "$LOG"
    KILN_PDL=1 $K bench latency --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_8b_${Q}_pdl.json" 2>&1 | tail -6 | tee -a "$LOG"
  fi
  if [ "${PRODUCER_COMPARE:-0}" = 1 ] && [ "$Q" = fp8 ]; then  # norms / SiLU-mul quantize
    echo "== $Q with KILN_PRODUCER_QUANT=1" | tee -a "$LOG"
    KILN_PRODUCER_QUANT=1 $K bench latency --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_8b_${Q}_producer.json" 2>&1 | tail -6 | tee -a "$LOG"
  fi
  if [ "${FUSED_COMPARE:-0}" = 1 ]; then
    echo "== $Q with KILN_QUANT_FUSED_SPLITK=0" | tee -a "$LOG"
    KILN_QUANT_FUSED_SPLITK=0 $K bench latency --model $E --batch-size 1 --input-len 128 --output-len 256 --num-iters 3 --num-iters-warmup 1 --no-progress --json "$OUT/latency_8b_${Q}_separate.json" 2>&1 | tail -6 | tee -a "$LOG"
  fi
done
for S in ${MAX_SEQS:-1024}; do
  [ -d /tmp/e8b-fp8 ] && $K bench throughput --model /tmp/e8b-fp8 --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs $S --max-num-batched-tokens ${MAX_TOKENS:-8192} --no-progress --json "$OUT/throughput_8b_fp8_s$S.json" 2>&1 | tail -4 | tee -a "$LOG"
  if [ "${PRODUCER_COMPARE:-0}" = 1 ] && [ -d /tmp/e8b-fp8 ]; then
    KILN_PRODUCER_QUANT=1 $K bench throughput --model /tmp/e8b-fp8 --num-prompts 1000 --input-len 128 --output-len 128 --max-num-seqs $S --max-num-batched-tokens ${MAX_TOKENS:-8192} --no-progress --json "$OUT/throughput_8b_fp8_s${S}_producer.json" 2>&1 | tail -4 | tee -a "$LOG"
  fi
done
