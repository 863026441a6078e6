#!/usr/bin/env bash
# The fp8 engine's batch 1 read 331.3 tok/s (TTFT 49.2 ms) at this tree on an H200 (2026-12-07,
# fifty-first session), against 377.9 (TTFT 27.8 ms) at 6ac49fd on an earlier H200: the code, or
# the machine? Both trees on one engine (/tmp/e-fp8, built by this tree; rebuilt if the machine is
# fresh), alternating, then each tree's kernel profile of 64 decode steps.
# Make the old tree first, without the demo weights (a call carries at most 64 MiB), and carry it:
#   mkdir .old-kiln && git archive 6ac49fd kiln benchmarks/profile | tar -x -C .old-kiln
#   rm -rf .old-kiln/kiln/demo/*/
#   B=540 bash benchmarks/h200-quant/b1_fp8_ab.sh      (OUT set by the device tool; carry .old-kiln)
# Ran on an H200 as ANY_CARD=1 B=420 (h200-2026-12-07j; its build then spelled out the same flags
# that fp8_engine passes now): both trees 379.9-380.2 tok/s.
. benchmarks/device_env.sh
. benchmarks/h200-quant/tp_run.sh
B=${B:-540}
NEW=$PWD OLD=$PWD/.old-kiln
start_log b1_ab.log
h200_only
[ -f /tmp/e-fp8/engine.json ] || fp8_engine $(left 300) /tmp/e-fp8 --eval-tokens 0 --no-kernel-cache
for r in 1 2; do
  for t in new old; do
    P=$NEW; [ $t = old ] && P=$OLD
    s=$(left 120); [ $s -lt 50 ] && break 2
    echo "== $t $r: $(cd $P && PYTHONPATH=$P python3 -c 'import kiln; print("kiln from", kiln.__file__)')" >> $LOG
    (cd $P && PYTHONPATH=$P timeout $((s < 90 ? s : 90)) python3 -m kiln.cli bench latency --model /tmp/e-fp8 \
      --batch-size 1 --input-len 128 --output-len 256 --no-progress --json $OUT/b1_${t}_$r.json 2>&1 \
      | grep -E "TTFT|GB/s|start" >> $LOG)
    echo "$t $r at $((SECONDS - T0)) s" | tee -a $LOG
  done
done
for t in new old; do
  P=$NEW; [ $t = old ] && P=$OLD
  s=$(left 5); [ $s -lt 50 ] && break
  (cd $P && PYTHONPATH=$P timeout $((s < 70 ? s : 70)) python3 benchmarks/profile/profile_engine.py --model /tmp/e-fp8 \
    --num-prompts 1 --input-len 128 --output-len 96 --skip-steps 16 --steps 64 --top 30 \
    --json $OUT/prof_$t.json > $OUT/prof_$t.log 2>&1)
  echo "profile $t at $((SECONDS - T0)) s" | tee -a $LOG
done
(cd $OUT && tar czf results.tgz *.json && rm -f *.json)
grep -E "==|TTFT|GB/s|at .* s" $LOG
