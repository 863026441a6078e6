#!/usr/bin/env bash
# Device call 6b (at most about 400 s): call6.sh cut down for a session with little device time
# left. 1. the GPU tests of the three decode fusions and the engine tests, with KILN_ATTN_ROPE=1
# KILN_SILU_IN_DOWN=1 KILN_NORM_IN_GEMV=1 in the environment; 2. bf16 8B batch 1, 128/256
# (ab_latency.py, 3 rounds): default, add + RMSNorm in the GEMVs alone, all three, and RoPE + SiLU
# with the norm launches skipped (ablate/sitecustomize.py: the bound).
#   bash benchmarks/h200-dataflow/call6b.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
N=8; [ "${MEM:-0}" -lt 100000 ] && N=4
KILN_ATTN_ROPE=1 KILN_SILU_IN_DOWN=1 KILN_NORM_IN_GEMV=1 timeout 200 python3 -m pytest -q -n $N \
  -p no:cacheprovider tests/gpu/test_norm_in_gemv_gpu.py tests/gpu/test_silu_in_down_gpu.py \
  tests/gpu/test_decode_rope_gpu.py tests/gpu/test_engine_gpu.py > $OUT/gpu_tests_fused.log 2>&1
echo "fusion + engine GPU tests with the three flags rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^FAILED|passed|failed" $OUT/gpu_tests_fused.log | sed 's/ - .*//' | tail -25
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
B="KILN_ATTN_ROPE=1 KILN_SILU_IN_DOWN=1"
V="base=;norm=KILN_NORM_IN_GEMV=1;all=$B KILN_NORM_IN_GEMV=1;skipnorm=$B KILN_ABLATE_SKIP=norm"
KILN_ABLATE_SKIP= PYTHONPATH=$PWD/benchmarks/h200-dataflow/ablate:$PWD timeout 170 \
  python3 benchmarks/ab_latency.py --model $M --variants "$V" \
  --rounds 3 --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_bf16.log
