#!/usr/bin/env bash
# Prepared in the session of 2026-12-07 (forty-fourth) for the next H200 (at most 580 s; on
# another card it stops unless ANY_CARD=1): the three runs this session could only make on H100s.
# 1. #7's fp8 1000 x 128/128, this tree against 8ba40d7, each tree from its own directory
#    (../h200-quant/ab_fp8_throughput.sh; make .old-kiln first, see that script, and carry it);
# 2. #5's workload on the bf16 checkpoint with a bf16 and an fp8 KV cache (bf16_kv_ab.sh);
# 3. the whole GPU suite, eight processes.
#   OLD_SRC=$PWD/.old-kiln bash benchmarks/h200-engine/next_h200.sh     (OUT set by the device tool)
. benchmarks/device_env.sh
echo "card: $card" | tee $OUT/next_h200.log
h200_only
ANY_CARD=1 B=240 bash benchmarks/h200-quant/ab_fp8_throughput.sh > /dev/null 2>&1
echo "fp8 A/B done at $((SECONDS - T0)) s" | tee -a $OUT/next_h200.log
B=150 bash benchmarks/h200-engine/bf16_kv_ab.sh > /dev/null 2>&1
echo "bf16 KV A/B done at $((SECONDS - T0)) s" | tee -a $OUT/next_h200.log
t=$((570 - SECONDS + T0))
[ $t -gt 120 ] && timeout $t python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu > $OUT/gpu_suite.log 2>&1
echo "suite rc $? at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_suite.log 2>/dev/null)" | tee -a $OUT/next_h200.log
grep -h "kiln from\|output tok/s\|at .* s:" $OUT/ab_fp8_throughput.log $OUT/bf16_kv_ab.log | tail -14
