#!/usr/bin/env bash
# The session's first device call (2026-12-07, forty-eighth): on an H200, bars_h200.sh (the bars
# of #5 and #7 on this tree); on any other card, the GPU tests at this tree (about 330 s on an
# H100: under `timeout 340` they stopped one test short, benchmarks/head/README.md section 6, so
# they now get all but 30 s of B) and, with 150 s left after them, the LM head sweep (three H100
# runs so far); with B under 400 the sweep alone. The JSON files go into one archive, since at
# most eight files come back from a call. --durations=25: which GPU tests take the time.
# H200_ONLY=1: on another card stop at once (the GPU suite passed whole at 562925f on an H100,
# benchmarks/head/README.md section 7; a late call keeps its budget for a later H200).
#   bash benchmarks/h200-quant/call_first.sh      (OUT set by the device tool)
#   H200_ONLY=1 SHORT=1 B=300 bash benchmarks/h200-quant/call_first.sh
. benchmarks/device_env.sh
export B=${B:-575}
[ "${H200_ONLY:-0}" = 1 ] && h200_only
case $card in
  *H200*) bash benchmarks/h200-quant/bars_h200.sh ;;  # SKIP_INT4=1 passes through
  *) echo "card: $card" | tee $OUT/gpu_tests.log
     [ $B -ge 400 ] && timeout $(( $B - 30 )) python3 -m pytest -q -p no:cacheprovider -n 8 --durations=25 tests/gpu >> $OUT/gpu_tests.log 2>&1
     tail -3 $OUT/gpu_tests.log
     echo "tests at $((SECONDS - T0)) s" | tee -a $OUT/gpu_tests.log
     [ $((SECONDS - T0)) -lt $(( $B - 150 )) ] && timeout $(( $B - 10 - SECONDS + T0)) bash benchmarks/head/head_sweep.sh ;;
esac
(cd $OUT && ls *.json > /dev/null 2>&1 && tar czf results.tgz *.json && rm -f *.json)
ls $OUT
