#!/usr/bin/env bash
# Device call 21 (prepared in the session of 2026-12-06, fortieth; at most about 420 s, any
# card): the whole GPU test suite on this tree. Its last full run was at 1eb3df1 (894 passed on
# an H200); the ring, register-direct and fp8 ring kernels have been added since and were run
# only file by file.
#   bash benchmarks/h200-ring/call21.sh     (OUT set by the device tool)
export PYTHONUNBUFFERED=1 OUT PYTHONPATH=$PWD
T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a $OUT/times.log
git log --oneline -1 2>/dev/null | tee -a $OUT/times.log
timeout ${TESTS_S:-400} python3 -m pytest -q -n 8 -p no:cacheprovider -rf tests/gpu > $OUT/gpu_tests.log 2>&1
echo "tests rc $? at $((SECONDS - T0)) s" | tee -a $OUT/times.log
grep -E "^(FAILED|ERROR)" $OUT/gpu_tests.log | head -40
tail -3 $OUT/gpu_tests.log
