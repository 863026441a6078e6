#!/usr/bin/env bash
# Device call 14: the first call of a session, for whichever card comes. On an H200, the bar's
# own question first: call8.sh (the bf16 8B built with --quant none, the build's batch-1 choice
# timed there, and #5's batch-1 command on the engine against the checkpoint). On an H100,
# call13.sh (where the int4 ring loses in the int4-wo engine).
#   bash benchmarks/h200-ring/call14.sh     (OUT set by the device tool)
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $name" | tee -a $OUT/card.log
case $name in
  *H200*) B=${B:-560} bash benchmarks/h200-ring/call8.sh ;;
  *) B=${B:-560} bash benchmarks/h200-ring/call13.sh ;;
esac
