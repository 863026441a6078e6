#!/usr/bin/env bash
# Prepared, NOT yet run: see call1.sh. fp8: the tensor-core GEMV's stream-K candidates, which lose
# when timed alone, weighed in the step (KILN_TC_STREAM_K=1, needed by the tuned copy's run too).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T="python3 benchmarks/kernels/tune_in_situ.py --batch-size 1 --context 256"
QUANT=fp8 VARIANTS="built=" timeout 150 bash benchmarks/run_variants_h200.sh
cp -r /tmp/e8b-fp8 /tmp/e8b-fp8-insitu
KILN_TC_STREAM_K=1 timeout 150 $T --model /tmp/e8b-fp8-insitu --json $OUT/insitu_fp8.json --write > $OUT/insitu.log 2>&1
QUANT=fp8 BUILD_TAG=-insitu VARIANTS="insitu=KILN_TC_STREAM_K=1" timeout 45 bash benchmarks/run_variants_h200.sh
QUANT=fp8 VARIANTS="built2=" timeout 45 bash benchmarks/run_variants_h200.sh
# bf16 checkpoint (no engine.json to write): the step times before / after are the result
KILN_TC_STREAM_K=1 timeout 120 $T --model /tmp/llama-3-8b --json $OUT/insitu_bf16.json >> $OUT/insitu.log 2>&1
