#!/usr/bin/env bash
# Device call 8 (prepared in the session of 2026-12-05, twenty-seventh; at most 570 s): the int4
# weight-only 8B engine at batch 1, 128/256 (ab_latency.py, 3 rounds) with none, each and both
# of KILN_ATTN_ROPE=1 and KILN_NORM_IN_GEMV=1 (the FMA GEMV of qkv_proj and gate_up normalizes x
# as it reads it), after the int4/int8 GPU tests of the norm in the GEMV.
#   bash benchmarks/h200-dataflow/call8.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout 150 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_norm_in_gemv_gpu.py \
  -k "int4 or weight_only" > $OUT/tests_norm_wo.log 2>&1
echo "weight-only norm-in-GEMV GPU tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^FAILED|passed|failed" $OUT/tests_norm_wo.log | sed 's/ - .*//' | tail -15
QUANT=int4-wo B1=0 timeout 240 bash benchmarks/run_variants_h200.sh > $OUT/build_int4.log 2>&1
echo "int4-wo build rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
left=$((560 - SECONDS + T0))
V="base=;rope=KILN_ATTN_ROPE=1;norm=KILN_NORM_IN_GEMV=1;both=KILN_ATTN_ROPE=1 KILN_NORM_IN_GEMV=1"
[ -d /tmp/e8b-int4-wo ] && [ $left -gt 40 ] && timeout $left python3 benchmarks/ab_latency.py \
  --model /tmp/e8b-int4-wo --variants "$V" --rounds 3 --json $OUT/ab_int4.json > $OUT/ab_int4.log 2>&1
echo "ab_latency int4-wo rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -6 $OUT/ab_int4.log
