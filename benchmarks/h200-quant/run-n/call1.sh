#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (seventh), NOT yet run: the whole-step GEMV tuner
# (kiln/tune/in_situ.py, benchmarks/kernels/tune_in_situ.py) on the three 8B engines, each followed
# by batch-1 latency with the stored choices. Call 1: int4 (about 5 minutes on a cold machine);
# call 2 (call2.sh): fp8 and bf16.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T="python3 benchmarks/kernels/tune_in_situ.py --batch-size 1 --context 256"
# int4-wo: the engine as built, then tuned in situ (stream-K candidates included by default)
QUANT=int4-wo VARIANTS="built=" timeout 200 bash benchmarks/run_variants_h200.sh
timeout 150 $T --model /tmp/e8b-int4-wo --json $OUT/insitu_int4.json --write > $OUT/insitu.log 2>&1
QUANT=int4-wo VARIANTS="insitu=" timeout 60 bash benchmarks/run_variants_h200.sh
