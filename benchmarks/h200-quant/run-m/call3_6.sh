#!/usr/bin/env bash
# calls 3-6, each issued while the machine of call 2 was still warm (its /tmp engines reused)
export PYTHONPATH=$PWD
# call 3: int4-wo batch 1, the two engines of call 2 alternating
QUANT=int4-wo VARIANTS="new3=" timeout 60 bash benchmarks/run_variants_h200.sh; QUANT=int4-wo BUILD_TAG=-nosk VARIANTS="nosk2=KILN_GEMV_STREAM_K=0" timeout 60 bash benchmarks/run_variants_h200.sh; QUANT=int4-wo VARIANTS="new4=" timeout 60 bash benchmarks/run_variants_h200.sh; QUANT=int4-wo BUILD_TAG=-nosk VARIANTS="nosk3=KILN_GEMV_STREAM_K=0" timeout 60 bash benchmarks/run_variants_h200.sh
# call 4: fp8 engine, batch 1 and 1000 x 128/128 at 1024 sequences
QUANT=fp8 TP=1 VARIANTS="base=" timeout 200 bash benchmarks/run_variants_h200.sh
# call 5: bf16 batch 1; int4-wo with an fp8 LM head
QUANT=none VARIANTS="base=" timeout 60 bash benchmarks/run_variants_h200.sh; QUANT=int4-wo BUILD_TAG=-head8 BUILD_ARGS="--lm-head-quant fp8" VARIANTS="head8=" timeout 170 bash benchmarks/run_variants_h200.sh
# call 6: the whole GPU suite on this tree
timeout 200 python3 -m pytest tests/gpu -n 8 -q -p no:cacheprovider 2>&1 | tail -4 | tee $OUT/call6_gpu_tests.log
