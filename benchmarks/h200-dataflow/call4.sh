#!/usr/bin/env bash
# Device call 4 (session of 2026-12-05, twenty-sixth; at most 480 s), after call 2 ran on an H100
# and found two causes of other bits (flowing GEMVs autotuned under keys of their own; the
# compiler contracting the RoPE products in one kernel and not the other):
# 1. where the decode kernel's RoPE and the rotary launch differ, against the torch reference
#    (diag/rope_bytes.py);
# 2. the dataflow and decode-RoPE GPU tests, and the kernel tests of the rotary launch;
# 3. bf16 8B batch 1 (ab_latency.py, 3 rounds): default; KILN_ATTN_ROPE=1; RoPE with each flowing
#    boundary alone (attn, mlp, qkv); qkv+attn+mlp; every boundary; qkv+attn+mlp with the next
#    kernel scheduled as a waiter starts; qkv+attn+mlp and every boundary with acquire-load polls
#    (KILN_DATAFLOW_POLL=load).
#   bash benchmarks/h200-dataflow/call4.sh      (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
timeout 90 python3 benchmarks/h200-dataflow/diag/rope_bytes.py > $OUT/rope_bytes.log 2>&1
echo "rope diag rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "==|reference|differing" $OUT/rope_bytes.log | head -40
timeout 200 python3 -m pytest -q -n 4 -p no:cacheprovider tests/gpu/test_dataflow_gpu.py \
  tests/gpu/test_decode_rope_gpu.py "tests/gpu/test_kernels_gpu.py" -k "rope or rotary or flow" \
  > $OUT/tests_dataflow.log 2>&1
echo "dataflow, rope and rotary tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^FAILED|passed|failed" $OUT/tests_dataflow.log | sed 's/ - .*//' | tail -25
M=/tmp/llama-3-8b
[ -d $M ] || python3 -m kiln.cli random-model --preset llama-3-8b --out $M --device cuda 2>&1 | tail -1
R="KILN_ATTN_ROPE=1 KILN_DATAFLOW"
V="base=;rope=KILN_ATTN_ROPE=1;ra=$R=attn;rm=$R=mlp;rq=$R=qkv;rqam=$R=qkv,attn,mlp;rall=$R=1"
V="$V;rqaml=$R=qkv,attn,mlp KILN_DATAFLOW_EARLY_LAUNCH=1;rqamp=$R=qkv,attn,mlp KILN_DATAFLOW_POLL=load"
V="$V;rallp=$R=1 KILN_DATAFLOW_POLL=load"
left=$((470 - SECONDS + T0))
timeout $left python3 benchmarks/ab_latency.py --model $M --variants "$V" --rounds 3 \
  --json $OUT/ab_bf16.json > $OUT/ab_bf16.log 2>&1
echo "ab_latency bf16 rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
tail -13 $OUT/ab_bf16.log
