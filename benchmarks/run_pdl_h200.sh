#!/usr/bin/env bash
# Device call: programmatic dependent launch (KILN_PDL) on the 8B architecture, bf16.
# 1) tests/gpu with KILN_PDL=1 (every kernel under PDL) and the PDL parity test;
# 2) batch-1 decode for KILN_PDL x KILN_TRITON_GEMV; 3) TTFT 2048 and 1000 x 128/128 with PDL.
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; L=$OUT/run.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda > /dev/null 2>&1
K="python3 -m kiln.cli --log-level INFO bench"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== KILN_PDL=1 pytest tests/gpu tests/sample $(date +%T)" | tee -a $L
  KILN_PDL=1 timeout 240 python3 -m pytest tests/gpu tests/sample -n 8 -p no:cacheprovider -q -rfE --tb=short > $OUT/gpu_tests_pdl.log 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" $OUT/gpu_tests_pdl.log | tail -15 | tee -a $L
fi
for G in ${GEMVS:-0 1}; do for P in ${PDLS:-0 1}; do
  echo "== b1 KILN_TRITON_GEMV=$G KILN_PDL=$P $(date +%T)" | tee -a $L
  KILN_TRITON_GEMV=$G KILN_PDL=$P timeout 100 $K latency --model $M --batch-size 1 --input-len 128 --output-len 256 \
    --num-iters 3 --num-iters-warmup 1 --no-progress --json $OUT/b1_gemv${G}_pdl${P}.json 2>&1 | grep -E "TPOT|startup" | tee -a $L
done; done
P=${BEST_PDL:-1}; G=${BEST_GEMV:-1}
echo "== TTFT 2048, KILN_PDL=$P KILN_TRITON_GEMV=$G" | tee -a $L
KILN_TRITON_GEMV=$G KILN_PDL=$P timeout 90 $K latency --model $M --batch-size 1 --input-len 2048 --output-len 1 \
  --max-num-batched-tokens 4096 --num-iters 5 --no-progress 2>&1 | grep -E "TTFT" | tee -a $L
echo "== 1000 x 128/128 at 1024 seqs, KILN_PDL=$P KILN_TRITON_GEMV=$G" | tee -a $L
KILN_TRITON_GEMV=$G KILN_PDL=$P timeout 100 $K throughput --model $M --num-prompts 1000 --input-len 128 --output-len 128 \
  --max-num-seqs 1024 --max-num-batched-tokens 8192 --no-progress --json $OUT/tp_s1024_pdl.json 2>&1 | grep -E "tok/s|compiled after" | cut -c1-300 | tee -a $L
