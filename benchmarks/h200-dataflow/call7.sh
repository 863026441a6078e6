#!/usr/bin/env bash
# Device call 7 (prepared in the session of 2026-12-05, twenty-seventh; at most 480 s), for when
# call 6 had no time left for fp8: the 8B fp8 engine at batch 1, 128/256 (ab_latency.py, 3
# rounds) with none, each and both of KILN_ATTN_ROPE=1 and KILN_NORM_IN_GEMV=1 (qkv_proj and
# gate_up normalize and quantize their rows per token as they load them), after the GPU tests
# of the norm in the GEMV.
#   bash benchmarks/h200-dataflow/call7.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_norm_in_gemv_gpu.py \
  > $OUT/tests_norm.log 2>&1
echo "norm-in-GEMV GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^FAILED|passed|failed" $OUT/tests_norm.log | sed 's/ - .*//' | tail -15
QUANT=fp8 B1=0 timeout 150 bash benchmarks/run_variants_h200.sh > $OUT/build_fp8.log 2>&1
echo "fp8 build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
left=$((470 - SECONDS + T0))
V="base=;rope=KILN_ATTN_ROPE=1;norm=KILN_NORM_IN_GEMV=1;both=KILN_ATTN_ROPE=1 KILN_NORM_IN_GEMV=1"
[ -d /tmp/e8b-fp8 ] && [ $left -gt 40 ] && timeout $left python3 benchmarks/ab_latency.py \
  --model /tmp/e8b-fp8 --variants "$V" --rounds 3 --json $OUT/ab_fp8.json > $OUT/ab_fp8.log 2>&1
echo "ab_latency fp8 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_fp8.log
