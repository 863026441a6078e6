#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (seventh), NOT yet run: the whole-step GEMV tuner
# (kiln/tune/in_situ.py, benchmarks/kernels/tune_in_situ.py) on the 8B engines. The engine as built
# is copied, the copy tuned in situ (--write), and both run at batch 1, alternating.
# Call 1: int4 (about 5 minutes on a cold machine); call 2 (call2.sh): fp8 and bf16.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T="python3 benchmarks/kernels/tune_in_situ.py --batch-size 1 --context 256"
QUANT=int4-wo VARIANTS="built=" timeout 300 bash benchmarks/run_variants_h200.sh
cp -r /tmp/e8b-int4-wo /tmp/e8b-int4-wo-insitu
# candidates: the stream-K ones (default) and the forced-split ones (KILN_GEMV_TUNE_SPLIT=1, which
# the run of the tuned copy then needs too, to accept them)
KILN_GEMV_TUNE_SPLIT=1 timeout 200 $T --model /tmp/e8b-int4-wo-insitu --json $OUT/insitu_int4.json --write > $OUT/insitu.log 2>&1
QUANT=int4-wo BUILD_TAG=-insitu VARIANTS="insitu=KILN_GEMV_TUNE_SPLIT=1" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo VARIANTS="built2=" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-insitu VARIANTS="insitu2=KILN_GEMV_TUNE_SPLIT=1" timeout 45 bash benchmarks/run_variants_h200.sh
