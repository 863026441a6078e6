#!/usr/bin/env bash
# Ran once, at 807bdd6 (run-c); KILN_SILU_IN_DOWN and KILN_NORM_IN_GEMV were removed after it, so
# it measures them only at that commit.
# Device call 6 (prepared in the sessions of 2026-12-05, twenty-sixth and twenty-seventh; at most
# 570 s): what KILN_ATTN_ROPE=1, KILN_SILU_IN_DOWN=1 (SiLU-mul in the MLP down's loads) and
# KILN_NORM_IN_GEMV=1 (add + RMSNorm in the loads of qkv_proj and gate_up) need before they
# can be defaults.
# 1. the whole GPU suite (tests/gpu, tests/sample) with the three in the environment (tests that
#    compare them on and off set them themselves); 8 workers on an H200, 4 on an 80 GB card
#    (eight engines did not fit there in run-b's call 2);
# 2. bf16 8B batch 1, 128/256 (ab_latency.py, 3 rounds): default, each, all three, and RoPE +
#    SiLU with the add + RMSNorm launches skipped (ablate/sitecustomize.py; the bound on what
#    taking the norms into the GEMVs can give, to set beside "all");
# 3. the fp8 engine with and without KILN_ATTN_ROPE=1 and KILN_NORM_IN_GEMV=1 (its norms quantize
#    in the GEMVs too), as time allows (else call7.sh, removed with the flags).
#   bash benchmarks/h200-dataflow/call6.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
N=8; [ "${MEM:-0}" -lt 100000 ] && N=4
KILN_ATTN_ROPE=1 KILN_SILU_IN_DOWN=1 KILN_NORM_IN_GEMV=1 timeout 300 python3 -m pytest -q -n $N -p no:cacheprovider tests/gpu \
  tests/sample > $OUT/gpu_tests_rope.log 2>&1
echo "GPU suite with KILN_ATTN_ROPE=1 KILN_SILU_IN_DOWN=1 KILN_NORM_IN_GEMV=1 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^FAILED|passed|failed" $OUT/gpu_tests_rope.log | sed 's/ - .*//' | tail -25
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
B="KILN_ATTN_ROPE=1 KILN_SILU_IN_DOWN=1"
V="base=;rope=KILN_ATTN_ROPE=1;silu=KILN_SILU_IN_DOWN=1;norm=KILN_NORM_IN_GEMV=1"
V="$V;all=$B KILN_NORM_IN_GEMV=1;skipnorm=$B KILN_ABLATE_SKIP=norm"
# skipnorm (measurement only, wrong values): the norms launch nothing, the bound on fusing them
KILN_ABLATE_SKIP= PYTHONPATH=$PWD/benchmarks/h200-dataflow/ablate:$PWD timeout 200 \
  python3 benchmarks/ab_latency.py --model $M --variants "$V" \
  --rounds 3 --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_bf16.log
if [ $((SECONDS - T0)) -lt 420 ]; then
  QUANT=fp8 B1=0 timeout 150 bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "fp8 build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  left=$((560 - SECONDS + T0))
  [ -d /tmp/e8b-fp8 ] && [ $left -gt 40 ] && timeout $left python3 benchmarks/ab_latency.py \
    --model /tmp/e8b-fp8 --variants "base=;rope=KILN_ATTN_ROPE=1;norm=KILN_NORM_IN_GEMV=1;both=KILN_ATTN_ROPE=1 KILN_NORM_IN_GEMV=1" --rounds 3 \
    --json $OUT/ab_fp8.json > $OUT/ab_fp8.log 2>&1
  echo "ab_latency fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -3 $OUT/ab_fp8.log
fi
