#!/usr/bin/env bash
# Prepared in the session of 2026-12-07 (forty-sixth), for an H200 (stops on another card unless
# ANY_CARD=1; at most B = 570 s): this tree's RoPE in packed 16-bit PTX arithmetic and the fp8 LM
# head writing the decode graphs' logits buffer, against main before them (OLD_SRC: the kiln
# package of main, `git archive main kiln | tar -x -C .main-kiln` with the demo weights
# excluded, carried).
# 1. the GPU tests of what changed (kernels against their references, 16-bit RoPE bit-exact, the
#    decode kernel's RoPE, the fp8 cache, graph inputs, the fp8 LM head engine); stops if red;
# 2. #7's fp8 1000 x 128/128, main and this tree alternating (ab_fp8_throughput.sh).
#   OLD_SRC=$PWD/.main-kiln bash benchmarks/h200-quant/rotary_logits_ab.sh
. benchmarks/device_env.sh
B=${B:-570}
LOG=$OUT/rotary_logits_ab.log
echo "card: $card" | tee $LOG
h200_only
timeout $(left 330) python3 -m pytest -q -p no:cacheprovider -n 8 tests/gpu/test_kernels_gpu.py \
  tests/gpu/test_decode_rope_gpu.py tests/gpu/test_fp8_kv_gpu.py tests/gpu/test_graph_inputs_gpu.py \
  tests/gpu/test_engine_gpu.py::test_fp8_lm_head_engine > $OUT/gpu_tests.log 2>&1
rc=$?
echo "GPU tests rc $rc at $((SECONDS - T0)) s: $(tail -1 $OUT/gpu_tests.log)" | tee -a $LOG
[ $rc = 0 ] || { grep -E "^FAILED|^ERROR" $OUT/gpu_tests.log | head -20; exit 1; }
ANY_CARD=1 OLD=${OLD:-main} B=$(left 5) bash benchmarks/h200-quant/ab_fp8_throughput.sh > /dev/null 2>&1
grep -h "kiln from\|output tok/s\|at .* s" $OUT/ab_fp8_throughput.log | tee -a $LOG
