#!/usr/bin/env bash
# Device call 10 (session of 2026-12-05, twenty-ninth; at most 570 s).
# 1. bf16 8B batch 1, 128/256 (ab_latency.py, 3 rounds, one process): the default, KILN_ATTN_ROPE=1,
#    and with RoPE: the split-K GEMVs' separate reduce launch (KILN_QUANT_FUSED_SPLITK=0), and
#    their partials never summed (ablate: KILN_ABLATE_SKIP=reduce, all tensor-core GEMVs;
#    reduce-h, only o_proj and down_proj; wrong values, measurement only): what summing the
#    splits in the kernel that reads the GEMV's output (the add + RMSNorm) could save at most;
# 2. the fp8 engine (kiln build, as run_variants_h200.sh builds it) with and without
#    KILN_ATTN_ROPE=1, then the int4-wo engine the same way, as time allows.
#   bash benchmarks/h200-dataflow/call10.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
R="KILN_ATTN_ROPE=1"
V="base=;rope=$R;rope_unfused=$R KILN_QUANT_FUSED_SPLITK=0"
V="$V;rope_noreduce=$R KILN_ABLATE_SKIP=reduce;rope_noreduce_h=$R KILN_ABLATE_SKIP=reduce-h"
KILN_ABLATE_SKIP= PYTHONPATH=$PWD/benchmarks/h200-dataflow/ablate:$PWD timeout 220 \
  python3 benchmarks/ab_latency.py --model $M --variants "$V" \
  --rounds 3 --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_bf16.log
for Q in fp8 int4-wo; do
  left=$((560 - SECONDS + T0))
  [ $left -lt 120 ] && break
  QUANT=$Q B1=0 OUT=$OUT/build_$Q timeout $((left - 60)) bash benchmarks/run_variants_h200.sh > /dev/null 2>&1
  echo "$Q build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  cat $OUT/build_$Q/variants.log 2>/dev/null | tail -4
  left=$((560 - SECONDS + T0))
  [ -d /tmp/e8b-$Q ] && [ $left -gt 45 ] && timeout $left python3 benchmarks/ab_latency.py \
    --model /tmp/e8b-$Q --variants "base=;rope=$R" --rounds 3 \
    --json $OUT/ab_$Q.json > $OUT/ab_$Q.log 2>&1
  echo "ab_latency $Q rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
  tail -3 $OUT/ab_$Q.log
done
