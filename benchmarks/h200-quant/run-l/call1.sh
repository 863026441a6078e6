#!/usr/bin/env bash
# call 1: GPU tests (review commits), Gluon int4 race, ncu of the GEMVs
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L > $OUT/gpu_tests.log
git log --oneline -1 >> $OUT/gpu_tests.log 2>/dev/null
timeout 200 python3 -m pytest tests/gpu -n 8 -q -p no:cacheprovider 2>&1 | tail -15 >> $OUT/gpu_tests.log
timeout 200 python3 benchmarks/kernels/gluon_int4_gemv.py --json $OUT/gluon.json > $OUT/gluon.log 2>&1; echo "gluon rc $?" >> $OUT/gluon.log
timeout 150 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats -k regex:gemv -c 14 python3 benchmarks/h200-quant/run-l/ncu_gemv.py > $OUT/ncu.txt 2>&1; echo "ncu rc $?" >> $OUT/ncu.txt
