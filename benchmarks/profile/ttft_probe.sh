#!/usr/bin/env bash
# A short prompt's TTFT split into the host's launch and the device's work (ttft_probe.py): the
# fp8 8B engine /tmp/e-fp8 in two processes (kiln bench latency read 29 to 51 ms at 128 tokens
# from process to process, benchmarks/h200-quant/h200-2026-12-07j) and the bf16 checkpoint
# /tmp/llama-3-8b between them; each at most 90 s, all within B seconds. On a machine where
# benchmarks/h200-quant/bars_h200.sh has run, both exist; otherwise they are made first (the
# engine as bars_h200.sh builds it). Then, as time allows, a Chrome trace and a host profile of
# one 128-token prefill step (profile_engine.py; PROF=0 skips them). The first fp8 run and the
# bf16 run sample the main thread's stack (--sample), the second fp8 run (last) does not. Before them,
# host_op_cost.py: the host time of one F.linear, torch._scaled_mm, Triton launch, torch.empty.
#   B=300 bash benchmarks/profile/ttft_probe.sh      (OUT set by the device tool)
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
export PYTHONPATH=$PWD
B=${B:-300}
start_log ttft_probe.log
# (tp_run.sh's fp8_engine makes the checkpoint too, and logs the engine's time)
[ -f /tmp/e-fp8/engine.json ] || fp8_engine $(left 90) /tmp/e-fp8 --no-kernel-cache --eval-tokens 0
checkpoint
probe() {  # probe TAG MODEL [FLAGS...]
  local tag=$1 model=$2 t; shift 2; t=$(left 5); [ $t -lt 40 ] && { echo "skip $tag ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 90 ? t : 90)) python3 benchmarks/profile/ttft_probe.py --model $model --input-len 128 \
    --iters 20 --label $tag --json $OUT/ttft_$tag.json "$@" 2>&1 | grep -E "==|median|kernels|thread|%|samples" >> $LOG
  echo "$tag at $((SECONDS - T0)) s" | tee -a $LOG
}
prof() {  # prof TAG FLAGS...: profile_engine.py on the first step of a 128-token prompt
  local tag=$1 t; shift; t=$(left 5); [ $t -lt 40 ] && { echo "skip $tag ($t s left)" | tee -a $LOG; return; }
  timeout $((t < 60 ? t : 60)) python3 benchmarks/profile/profile_engine.py --model /tmp/e-fp8 --num-prompts 1 \
    --input-len 128 --output-len 2 --skip-steps 0 --steps 1 "$@" 2>&1 | grep -E "==" >> $LOG
  echo "$tag at $((SECONDS - T0)) s" | tee -a $LOG
}
timeout 40 python3 benchmarks/profile/host_op_cost.py --json $OUT/host_op_cost.json 2>&1 | tail -4 >> $LOG
echo "host_op_cost at $((SECONDS - T0)) s" | tee -a $LOG
probe fp8_a /tmp/e-fp8 --sample
probe bf16 $M --sample
probe fp8_b /tmp/e-fp8
[ "${PROF:-1}" = 1 ] || { cat $LOG; exit 0; }
prof trace --trace $OUT/trace_prefill128.json
prof host --host-profile $OUT/host_prefill128.txt
[ -f $OUT/trace_prefill128.json ] && gzip $OUT/trace_prefill128.json
(cd $OUT && ls ttft_*.json > /dev/null 2>&1 && tar czf ttft.tgz ttft_*.json && rm -f ttft_*.json)
cat $LOG; ls $OUT
