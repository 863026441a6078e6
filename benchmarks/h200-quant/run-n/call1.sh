#!/usr/bin/env bash
# Prepared in the session of 2026-12-03 (seventh), NOT yet run: the whole-step GEMV tuner
# (kiln/tune/in_situ.py, benchmarks/kernels/tune_in_situ.py) on the three 8B engines, each followed
# by batch-1 latency with the stored choices. About 8 minutes on a cold machine.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T="python3 benchmarks/kernels/tune_in_situ.py --batch-size 1 --context 256"
# int4-wo: the engine as built, then tuned in situ (stream-K candidates included by default)
QUANT=int4-wo VARIANTS="built=" timeout 200 bash benchmarks/run_variants_h200.sh
timeout 150 $T --model /tmp/e8b-int4-wo --json $OUT/insitu_int4.json --write > $OUT/insitu.log 2>&1
QUANT=int4-wo VARIANTS="insitu=" timeout 60 bash benchmarks/run_variants_h200.sh
# fp8: the tensor-core GEMV's stream-K candidates weighed in situ (they lose when timed alone)
QUANT=fp8 VARIANTS="built=" timeout 150 bash benchmarks/run_variants_h200.sh
KILN_TC_STREAM_K=1 timeout 150 $T --model /tmp/e8b-fp8 --json $OUT/insitu_fp8.json --write >> $OUT/insitu.log 2>&1
QUANT=fp8 VARIANTS="insitu=KILN_TC_STREAM_K=1" timeout 60 bash benchmarks/run_variants_h200.sh
# bf16 checkpoint (no engine.json to write): the step times before / after are the result
KILN_TC_STREAM_K=1 timeout 120 $T --model /tmp/llama-3-8b --json $OUT/insitu_bf16.json >> $OUT/insitu.log 2>&1
