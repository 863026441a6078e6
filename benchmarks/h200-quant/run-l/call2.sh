#!/usr/bin/env bash
# call 2: what the small kernels cost a bf16 8B batch-1 step: drop them (KILN_ABLATE, benchmarks/h200-quant/run-l/ablate), and a profile without PDL
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
A="PYTHONPATH=benchmarks/h200-quant/run-l/ablate:."
QUANT=none VARIANTS="base=;norm=KILN_ABLATE=norm $A;silu=KILN_ABLATE=silu $A;rope=KILN_ABLATE=rope $A;all=KILN_ABLATE=norm,silu,rope $A" timeout 420 bash benchmarks/run_variants_h200.sh
KILN_PDL=0 timeout 120 python3 benchmarks/profile/profile_engine.py --model /tmp/llama-3-8b --num-prompts 1 --output-len 96 --skip-steps 16 --steps 64 --json $OUT/profile_bf16_nopdl.json > $OUT/profile_bf16_nopdl.txt 2>&1
