#!/usr/bin/env bash
# call 4: bf16 8B batch 1, tensor-core GEMV stream-K candidates off/on, alternating
QUANT=none VARIANTS="nosk=KILN_TC_STREAM_K=0;sk=;nosk2=KILN_TC_STREAM_K=0;sk2=" timeout 280 bash benchmarks/run_variants_h200.sh
# call 5 (then repeated as base2/sk2 on the same engines): int4-wo 8B batch 1, FMA GEMV stream-K candidates off (engine tuned without) / on (engine built and run with KILN_GEMV_STREAM_K=1)
QUANT=int4-wo VARIANTS="base=" timeout 200 bash benchmarks/run_variants_h200.sh
QUANT=int4-wo BUILD_TAG=-sk BUILD_ENV="KILN_GEMV_STREAM_K=1" VARIANTS="sk=KILN_GEMV_STREAM_K=1" timeout 200 bash benchmarks/run_variants_h200.sh
