#!/usr/bin/env bash
# Prepared, NOT yet run: see call1.sh.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T="python3 benchmarks/kernels/tune_in_situ.py --batch-size 1 --context 256"
# fp8: the tensor-core GEMV's stream-K candidates weighed in situ (they lose when timed alone)
QUANT=fp8 VARIANTS="built=" timeout 150 bash benchmarks/run_variants_h200.sh
KILN_TC_STREAM_K=1 timeout 150 $T --model /tmp/e8b-fp8 --json $OUT/insitu_fp8.json --write > $OUT/insitu.log 2>&1
QUANT=fp8 VARIANTS="insitu=KILN_TC_STREAM_K=1" timeout 60 bash benchmarks/run_variants_h200.sh
# bf16 checkpoint (no engine.json to write): the step times before / after are the result
KILN_TC_STREAM_K=1 timeout 120 $T --model /tmp/llama-3-8b --json $OUT/insitu_bf16.json >> $OUT/insitu.log 2>&1
