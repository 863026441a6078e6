#!/usr/bin/env bash
# Device call 9 (at most 360 s): the whole GPU suite with its defaults, eight processes, after the
# engine tests were given fixed KV blocks (they had failed at start-up on an 80 GB card with
# eight processes asking a share of it each) and the memory-profiling test was added.
#   bash benchmarks/h200-ring/call9.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
timeout ${B:-350} python3 -m pytest -q -n 8 -p no:cacheprovider tests/gpu tests/sample > $OUT/gpu_suite.log 2>&1
echo "GPU suite rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "FAILED|ERROR" $OUT/gpu_suite.log | sed 's/ - .*//' | sort -u | head -20
tail -1 $OUT/gpu_suite.log
