#!/usr/bin/env bash
# The piecewise prefill graphs (kiln/runner/prefill_graphs.py) on the GPU, within B seconds:
# 1. their GPU tests and the engine tests whose steps they now run (TESTS=0 skips them);
# 2. the short-prompt TTFT (ttft_probe.py, 128 tokens, 20 requests a process) with the graphs
#    (KILN_PREFILL_GRAPHS=1) and without (0), on the bf16 8B checkpoint and, with FP8=1, on the
#    fp8 engine (built as bars_h200.sh builds it, when missing);
# 3. last, as time allows: #5's one 2048-token prompt at batch 1 (kiln bench latency, 16 new
#    tokens), by default (a 2048-token step runs eagerly) and with 2048 captured.
# Each run's whole output goes into results.tgz, its main lines into prefill_graphs.log.
#   B=560 bash benchmarks/profile/prefill_graphs.sh          (OUT set by the device tool)
#   TESTS=0 BF16=0 FP8=1 B=300 bash benchmarks/profile/prefill_graphs.sh   (the fp8 engine alone)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-560}
start_log prefill_graphs.log
t=$(left 30); [ $t -gt 300 ] && t=300  # (B under 330 once gave timeout a negative limit: no tests ran)
if [ "${TESTS:-1}" = 1 ] && [ $t -ge 90 ]; then
  timeout $t python3 -m pytest -q -p no:cacheprovider -n 4 -rf tests/gpu/test_prefill_graphs_gpu.py \
    tests/gpu/test_engine_gpu.py::test_bf16_greedy_matches_transformers \
    tests/gpu/test_engine_gpu.py::test_batched_decode_with_graphs_equals_eager > $OUT/gpu_tests.log 2>&1
  tail -12 $OUT/gpu_tests.log >> $LOG
  echo "tests at $((SECONDS - T0)) s" | tee -a $LOG
fi
[ "${BF16:-1}" = 1 ] && checkpoint  # the fp8 engine, when missing, is built from it too (fp8_engine)
echo "checkpoint at $((SECONDS - T0)) s" | tee -a $LOG
ttft() {  # ttft TAG MODEL GRAPHS(1/0): 20 requests of 128 tokens in one process
  local t; t=$(left 5); [ $t -lt 40 ] && { echo "skip $1 ($t s left)" | tee -a $LOG; return; }
  KILN_PREFILL_GRAPHS=$3 timeout $((t < 80 ? t : 80)) python3 benchmarks/profile/ttft_probe.py --model $2 \
    --input-len 128 --iters 20 --label $1 --json $OUT/ttft_$1.json > $OUT/ttft_$1.log 2>&1
  grep -E "==|median|kernels|captured|Error|error" $OUT/ttft_$1.log >> $LOG
  echo "$1 at $((SECONDS - T0)) s" | tee -a $LOG
}
long() {  # long TAG [FLAGS]: one 2048-token prompt at batch 1
  local tag=$1 t; shift; t=$(left 5); [ $t -lt 40 ] && { echo "skip $tag ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 80 ? t : 80)) python3 -m kiln.cli bench latency --model $M --dtype bfloat16 --batch-size 1 \
    --input-len 2048 --output-len 16 --no-progress --json $OUT/long_$tag.json "$@" > $OUT/long_$tag.log 2>&1
  grep -E "TTFT|tok/s|start|captured|Error|error" $OUT/long_$tag.log >> $LOG
  echo "long $tag at $((SECONDS - T0)) s" | tee -a $LOG
}
if [ "${BF16:-1}" = 1 ]; then
  ttft bf16_graphs $M 1
  ttft bf16_eager $M 0
fi
if [ "${FP8:-0}" = 1 ]; then
  [ -f /tmp/e-fp8/engine.json ] || fp8_engine $(left 90) /tmp/e-fp8 --no-kernel-cache --eval-tokens 0
  ttft fp8_graphs /tmp/e-fp8 1
  ttft fp8_eager /tmp/e-fp8 0
fi
if [ "${BF16:-1}" = 1 ]; then
  long default
  long g2048 --prefill-graph-sizes 16 32 48 64 96 128 192 256 384 512 768 1024 1536 2048
fi
(cd $OUT && ls ttft_* long_* > /dev/null 2>&1 && tar czf results.tgz ttft_* long_* && rm -f ttft_* long_*)
cat $LOG
